r"""The study's random forest: 100 trees, max_features="sqrt" (what the study's "auto" meant), all cores.

python main.py --config=configs/random_forest.py --workdir=runs/rf
python main.py --config=configs/random_forest.py --config.data.use_validation_for_training=True   # 60k, as the study
"""

import ml_collections
from ml_collections import config_dict

from configs import common


def get_config() -> ml_collections.ConfigDict:
    config = common.baseline_config("random_forest")
    config.preprocess = "none"  # trees do not care about pixel scale
    m = config.model
    m.n_estimators = 100
    m.criterion = "gini"
    m.max_depth = config_dict.placeholder(int)  # None: grow until pure
    m.min_samples_split = 2
    m.min_samples_leaf = 1
    m.max_features = "sqrt"
    m.bootstrap = True
    m.n_jobs = -1  # every core
    return config
