"""Dispatch on `config.kind` and `config.mode`: what main.py runs, and what a comparison runs per member."""

from __future__ import annotations

import pathlib
from typing import Any

import ml_collections
import numpy as np

from fmnist_jax import config_lib, metrics, predict
from fmnist_jax.errors import ConfigError

KINDS = ("cnn", "baseline")
MODES = ("train", "evaluate", "predict")


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> Any:
    """Runs `config` in `workdir`: train returns the results dict, evaluate too, predict the rows printed."""
    kind, mode = config.get("kind"), config.get("mode", "train")
    if kind not in KINDS:
        raise ConfigError(f"config.kind={kind!r} is not one of {KINDS}.")
    if mode not in MODES:
        raise ConfigError(f"config.mode={mode!r} is not one of {MODES}.")
    workdir = pathlib.Path(workdir)
    if kind == "cnn":
        return _run_cnn(config, workdir, mode)
    return _run_baseline(config, workdir, mode)


def _inputs(config: ml_collections.ConfigDict) -> tuple[np.ndarray, list[str]]:
    return predict.load_images(predict.parse_inputs(config.predict.inputs))


def _run_cnn(config: ml_collections.ConfigDict, workdir: pathlib.Path, mode: str) -> Any:
    from fmnist_jax import parallel, train  # pylint: disable=import-outside-toplevel  (JAX only when needed)

    parallel.maybe_initialize_distributed()
    train.check_config(config)
    parallel.check_batch_size(config.batch_size, parallel.make_mesh())
    if mode == "train":
        if parallel.is_lead_process():
            config_lib.save_or_check(config, workdir)
        return train.train_and_evaluate(config, workdir)
    if mode == "evaluate":
        return train.evaluate_checkpoint(config, workdir)
    images, names = _inputs(config)
    probs = train.predict_images(config, workdir, images)
    return predict.report(workdir, names, probs, probs.argmax(-1))


def _run_baseline(config: ml_collections.ConfigDict, workdir: pathlib.Path, mode: str) -> Any:
    from fmnist_jax import baselines, data  # pylint: disable=import-outside-toplevel

    baselines.check_config(config)
    if mode == "train":
        config_lib.save_or_check(config, workdir)
        return baselines.fit_and_evaluate(config, workdir)
    estimator = baselines.load_estimator(workdir)
    if mode == "evaluate":
        dataset = data.load(config.data, seed=config.seed)
        previous = metrics.load_results(workdir) if (workdir / metrics.RESULTS_FILE).exists() else {}
        return baselines.score(config, workdir, estimator, dataset, train_seconds=previous.get("train_seconds"),
                               extra={k: previous.get(k) for k in ("converged", "n_iter")})
    images, names = _inputs(config)
    preds, probs = baselines.predict(estimator, baselines.flatten(images))
    return predict.report(workdir, names, probs, preds)
