r"""Baseline fit and predict speed: the project's fit (with progress) against plain scikit-learn, same
parameters, in one run. One JSON line per measurement, then the ratios.

    python benchmarks/baselines_speed.py                         # forest and SVM on the 48k training images
    python benchmarks/baselines_speed.py --models=random_forest --num-train=10000
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import resource
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sklearn import base

from configs import linear_svm, random_forest
from fmnist_jax import baselines, data

CONFIGS = {"random_forest": random_forest, "linear_svm": linear_svm}


def fit_plain(estimator, x, y) -> None:
    """scikit-learn's own fit, nothing around it."""
    estimator.fit(x, y)


def measure(name: str, how: str, fit_fn, estimator, x_test, y_test) -> dict:
    start = time.perf_counter()
    info = fit_fn()
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    pred, _ = baselines.predict(estimator, x_test)
    predict_seconds = time.perf_counter() - start
    row = {
        "model": name,
        "fit": how,
        "fit_seconds": round(fit_seconds, 1),
        "predict_seconds": round(predict_seconds, 2),
        "predict_images_per_second": round(len(x_test) / predict_seconds),
        "test_accuracy": float((pred == y_test).mean()),
        "cores": os.cpu_count(),
        "peak_host_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        **(info or {}),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="random_forest,linear_svm")
    parser.add_argument("--num-train", type=int, default=None, help="training images (default: all 48,000)")
    args = parser.parse_args()
    for name in args.models.split(","):
        config = CONFIGS[name].get_config()
        config.data.num_train = args.num_train
        if "verbose" in config.model:
            config.model.verbose = 0  # keep stdout for the JSON lines
        ds = data.load(config.data, seed=config.seed)
        x, y = baselines.flatten(ds.train.images), ds.train.labels
        x_test, y_test = baselines.flatten(ds.test.images), ds.test.labels
        ours = baselines.create_estimator(config)
        row_ours = measure(
            name, "fmnist_jax (progress)", functools.partial(baselines.fit, ours, x, y), ours, x_test, y_test
        )
        plain = base.clone(baselines.create_estimator(config))
        row_plain = measure(
            name, "plain scikit-learn", functools.partial(fit_plain, plain, x, y), plain, x_test, y_test
        )
        print(
            json.dumps(
                {
                    "model": name,
                    "fit_seconds_ours_over_plain": round(row_ours["fit_seconds"] / row_plain["fit_seconds"], 2),
                    "same_accuracy": row_ours["test_accuracy"] == row_plain["test_accuracy"],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
