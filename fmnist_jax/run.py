"""Dispatch on `config.kind` and `config.mode`: what main.py runs, and what a comparison runs per member."""

from __future__ import annotations

import pathlib
from typing import Any

import ml_collections
import numpy as np

from fmnist_jax import config_lib, metrics, predict
from fmnist_jax.errors import ConfigError

KINDS = ("cnn", "baseline", "compare")
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
    if kind == "compare":
        return _run_compare(config, workdir)
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


def member_configs(config: ml_collections.ConfigDict) -> dict[str, tuple[ml_collections.ConfigDict, str | None]]:
    """Each member's own config (seed and, with quick=True, the quick overrides applied) and named workdir."""
    members = {}
    order = {"cnn": 0, "random_forest": 1, "linear_svm": 2}  # the study's order, other members after
    for name, member in sorted(config.members.items(), key=lambda item: (order.get(item[0], 9), item[0])):
        member = ml_collections.ConfigDict(member.to_dict())  # an unlocked copy
        named = member.get("workdir")
        del member["workdir"]
        member.seed = config.seed
        if config.quick and name in config.quick_overrides:
            config_lib.merge(member, config.quick_overrides[name])
        members[name] = (member, named)
    return members


def _run_compare(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict[str, Any]:
    """Runs every member that has no finished run yet, then builds the report from all of them."""
    from absl import logging  # pylint: disable=import-outside-toplevel

    from fmnist_jax import report  # pylint: disable=import-outside-toplevel

    if config.get("mode", "train") != "train":
        raise ConfigError("a comparison only trains and reports: run evaluate/predict on a member's workdir.")
    config_lib.save_or_check(config, workdir)
    folders = {}
    for name, (member, named) in member_configs(config).items():
        folder = pathlib.Path(named) if named else workdir / name
        if named and (folder / metrics.RESULTS_FILE).exists():
            logging.info("%s: reusing the finished run in %s", name, folder)
        else:
            logging.info("%s: running in %s", name, folder)
            run(member, folder)
        folders[name] = folder
    paths = report.build(list(folders.values()), workdir)
    logging.info("Report: %s and %s", paths["markdown"], paths["html"])
    return {name: metrics.load_results(folder) for name, folder in folders.items()}
