"""Sections every config shares: the data set and the run's mode."""

import ml_collections
from ml_collections import config_dict


def data_config() -> ml_collections.ConfigDict:
    data = ml_collections.ConfigDict()
    data.source = "auto"  # "auto": data.dir, $FMNIST_DATA_DIR, Debian's folder, then TFDS; or "idx"/"tfds"
    data.dir = config_dict.placeholder(str)  # folder with the four IDX files (.gz or raw)
    data.validation_size = 12000  # held out of the 60k training images by a seeded permutation
    data.num_train = config_dict.placeholder(int)  # None: all remaining 48k; fewer for quick runs
    return data


def baseline_config(model_name: str) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.kind = "baseline"  # what main.py runs: "cnn", "baseline" or "compare"
    config.name = model_name  # a label for results.json and the report
    config.seed = 0  # the split and the estimator's random_state
    config.mode = "train"  # "train" (fit, or report a finished run), "evaluate", "predict"
    config.model = ml_collections.ConfigDict({"name": model_name})
    config.data = data_config()
    config.data.use_validation_for_training = False  # True: fit on all 60k, as the study did for its forest
    # inputs: comma-separated image or .npy paths; output: the JSON file of the predictions ("": WORKDIR/predict.json)
    config.predict = ml_collections.ConfigDict({"inputs": "", "output": ""})
    # A search over model fields, scored on the validation split only; the best setting is then fitted and
    # scored on the test set. "none", "grid" (every setting on all training images) or "halving" (successive
    # halving: each round keeps the best 1/factor of the settings and trains them on factor times more images).
    config.search = ml_collections.ConfigDict({"method": "none", "factor": 3})
    config.search.grid = ml_collections.ConfigDict()  # model field -> tuple of values
    # A CNN's flag (a changed num_epochs, checkpointing or compute_dtype may go on in the same workdir), taken here
    # so that every config takes it; a baseline has none of those fields, so every change is still refused.
    config.resume_with_changes = False
    return config
