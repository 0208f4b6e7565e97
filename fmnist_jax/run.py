"""Dispatch on `config.kind`: what main.py runs, and what a comparison runs for each of its members."""

from __future__ import annotations

import pathlib
from typing import Any

import ml_collections

from fmnist_jax import config_lib
from fmnist_jax.errors import ConfigError

KINDS = ("cnn",)


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
    """Runs `config` in `workdir` and returns its results dict."""
    kind = config.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"config.kind={kind!r} is not one of {KINDS}.")
    if kind == "cnn":
        from fmnist_jax import parallel, train  # pylint: disable=import-outside-toplevel  (JAX only when needed)

        parallel.maybe_initialize_distributed()
        train.check_config(config)
        if parallel.is_lead_process():
            config_lib.save_or_check(config, workdir)
        return train.train_and_evaluate(config, workdir)
    raise AssertionError(kind)
