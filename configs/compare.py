r"""All three models and one report: each member trains (or is reused) in its own sub-workdir.

    python main.py --config=configs/compare.py --workdir=runs/compare                    # the full study
    python main.py --config=configs/compare.py --workdir=runs/quick --config.quick=True  # ~2 minutes on 2 cores
    python main.py --config=configs/compare.py --config.members.cnn.workdir=runs/cnn     # reuse a finished run
"""

import ml_collections
from ml_collections import config_dict

from configs import cnn, linear_svm, random_forest


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.kind = "compare"
    config.mode = "train"
    config.seed = 0  # every member's seed
    config.quick = False  # True: apply quick_overrides (few epochs, few trees, a data subset)
    # Each member is a full config (override any field: --config.members.cnn.num_epochs=5) plus `workdir`:
    # None trains in WORKDIR/<member>; a folder with a finished run is reported as it is.
    config.members = ml_collections.ConfigDict()
    for name, module in (("cnn", cnn), ("random_forest", random_forest), ("linear_svm", linear_svm)):
        member = module.get_config()
        member.workdir = config_dict.placeholder(str)
        config.members[name] = member
    config.quick_overrides = ml_collections.ConfigDict({
        "cnn": {"num_epochs": 3, "data": {"num_train": 12000, "validation_size": 2000}},
        "random_forest": {"model": {"n_estimators": 20}, "data": {"num_train": 12000, "validation_size": 2000}},
        "linear_svm": {"data": {"num_train": 12000, "validation_size": 2000}},
    })
    config.resume_with_changes = False
    return config
