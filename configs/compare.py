r"""Every model over seeds 0, 1, 2, then one report with intervals and paired tests (docs/comparison.md): the study's
three models took 53 min on 2 cores of an AMD EPYC (AVX-512); the VGG-BN CNN adds about 25 min a seed there.

python main.py --config=configs/compare.py --workdir=runs/compare               # every enabled member, 3 seeds
python main.py --config=configs/compare.py --workdir=runs/quick --config.quick=True --config.seeds=0,1
python main.py --config=configs/compare.py --config.seeds=0 --config.members.cnn.workdir=runs/cnn   # reuse a run
python main.py --config=configs/compare.py --config.members.random_forest_search.enabled=True       # add the search
python main.py --config=configs/compare.py --config.members.speedrun.enabled=True                   # add the speedrun
"""

import ml_collections
from ml_collections import config_dict

from configs import cnn, linear_svm, random_forest, random_forest_search, speedrun, vgg_bn


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.kind = "compare"
    config.mode = "train"
    config.seeds = (0, 1, 2)  # every member trains once per seed (--config.seeds=0,1,2)
    config.quick = False  # True: apply quick_overrides (few epochs, few trees, a data subset)
    # Each member is a full config (override any field: --config.members.cnn.num_epochs=5) plus `enabled` and
    # `workdir`: None trains in WORKDIR/<member>/seed_<seed>; a folder (with {seed} in it for several seeds)
    # holding a finished run is reported as it is (an interrupted one resumes; a missing one is an error).
    config.members = ml_collections.ConfigDict()
    members = (
        ("cnn", cnn),
        ("random_forest", random_forest),
        ("linear_svm", linear_svm),
        ("random_forest_search", random_forest_search),
        ("vgg_bn", vgg_bn),  # beyond the study: the stronger CNN recipe (~25 min a seed on 2 CPU cores)
        ("speedrun", speedrun),  # vgg_bn's recipe in ~0.3x its time (~6-9 min a seed on 2 CPU cores)
    )
    # Joining when asked: the search (~18 min a seed) and the speedrun, whose model and recipe vgg_bn already
    # represents in the report (it would add ~20 min to a 3-seed comparison on 2 CPU cores for no new question).
    optional = ("random_forest_search", "speedrun")
    for name, module in members:
        member = module.get_config()
        member.enabled = name not in optional
        member.workdir = config_dict.placeholder(str)
        config.members[name] = member
    config.members.linear_svm.model.verbose = 0  # its solver's lines would bury the CNNs' epochs (1: on)
    config.quick_overrides = ml_collections.ConfigDict(
        {
            "cnn": {"num_epochs": 3, "data": {"num_train": 12000, "validation_size": 2000}},
            "vgg_bn": {"num_epochs": 3, "data": {"num_train": 12000, "validation_size": 2000}},
            "speedrun": {"num_epochs": 3, "data": {"num_train": 12000, "validation_size": 2000}},
            "random_forest": {"model": {"n_estimators": 20}, "data": {"num_train": 12000, "validation_size": 2000}},
            "linear_svm": {"data": {"num_train": 12000, "validation_size": 2000}},
            "random_forest_search": {
                "search": {"grid": {"n_estimators": (10, 20), "max_features": ("sqrt", 0.1)}},
                "data": {"num_train": 12000, "validation_size": 2000},
            },
        }
    )
    config.resume_with_changes = False
    return config
