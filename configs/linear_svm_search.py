r"""LinearSVC's C on the pixels / 255, chosen on the validation split, then the best refitted.

python main.py --config=configs/linear_svm_search.py --workdir=runs/svm_search
"""

import ml_collections

from configs import linear_svm


def get_config() -> ml_collections.ConfigDict:
    config = linear_svm.get_config()
    config.name = "linear_svm_search"
    config.search.method = "grid"
    config.search.grid = ml_collections.ConfigDict({"C": (0.001, 0.01, 0.1, 1.0)})
    return config
