"""Fixtures: tiny Fashion-MNIST-shaped data sets written as real IDX files, the CNN config on them, the real
data. The plain helpers live in helpers.py."""

from __future__ import annotations

import os
import pathlib

import pytest
from helpers import REAL_DATA_DIR, load_config, write_idx_dataset

from fmnist_jax import run


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> pathlib.Path:
    """320 training and 100 test images in gzip IDX files."""
    return write_idx_dataset(tmp_path_factory.mktemp("tiny_data"), n_train=320, n_test=100)


@pytest.fixture
def cnn_config(tiny_data):
    """The CNN config on the tiny data: 64 validation, 256 training images (4 steps/epoch), 2 epochs."""
    return load_config(
        "cnn",
        **{
            "data.dir": str(tiny_data),
            "data.validation_size": 64,
            "num_epochs": 2,
            "steps_per_call": 2,
            "eval_batch_size": 50,
        },
    )


@pytest.fixture(scope="session")
def real_data_dir() -> pathlib.Path:
    """The real Fashion-MNIST files; missing ones fail in CI (never a silent skip there)."""
    if not (REAL_DATA_DIR / "train-images-idx3-ubyte.gz").exists():
        if os.environ.get("CI"):
            pytest.fail(f"the real data set is missing from {REAL_DATA_DIR}: .ci/run must install it")
        pytest.skip(f"real data not in {REAL_DATA_DIR} (apt-get install dataset-fashion-mnist)")
    return REAL_DATA_DIR


@pytest.fixture
def two_epoch_run(cnn_config, tmp_path):
    """A finished tiny run with checkpoints at steps 4, 6, 8 (every 2 steps, 3 kept)."""
    cnn_config.checkpoint.every_steps = 2
    run.run(cnn_config, tmp_path / "done")
    return cnn_config, tmp_path / "done"
