r"""The study's forest search, done on the validation split: n_estimators x max_features, then the best refitted.

    python main.py --config=configs/random_forest_search.py --workdir=runs/rf_search
    python main.py --config=configs/random_forest_search.py --config.search.method=grid   # every setting, all images

The study found 100 trees with max_features="auto" (= "sqrt" for a classifier) best. Successive halving scores
all 16 settings on a ninth of the 48k training images, the best third on a third, the best two on all of them.
"""

import ml_collections

from configs import random_forest


def get_config() -> ml_collections.ConfigDict:
    config = random_forest.get_config()
    config.name = "random_forest_search"
    config.search.method = "halving"
    config.search.grid = ml_collections.ConfigDict(
        {"n_estimators": (50, 100, 200, 400), "max_features": ("sqrt", "log2", 0.1, 0.2)}
    )
    return config
