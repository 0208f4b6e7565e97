"""Fixtures: tiny Fashion-MNIST-shaped data sets written as real IDX files, the CNN config on them, the real
data; one XLA compilation cache for the whole run. The plain helpers live in helpers.py."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import fingerprints
import jax
import pytest
import tolerances
from helpers import REAL_DATA_DIR, SUBPROCESS_TEMP_ENV

from fmnist_jax import run

CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"


# What `make test-fast` leaves out: the modules whose tests run main.py or train, and any test elsewhere that
# asks for a training run or the CNN config it trains (marked `integration`; the unit tests remain).
INTEGRATION_MODULES = {
    "test_benchmarks",
    "test_checkpoints",
    "test_fingerprint",
    "test_integration",
    "test_main",
    "test_parallel",
    "test_platform",
    "test_reliability",
    "test_vgg_bn_runs",
}
INTEGRATION_FIXTURES = {"cnn_config", "two_epoch_run", "finished_tiny_run", "comparison", "bf16_run", "real_data_dir"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__ in INTEGRATION_MODULES or INTEGRATION_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)


def pytest_addoption(parser):
    tolerances.add_option(parser)


def pytest_configure(config):
    """Every process of the run (the pytest workers and each main.py they start) shares one persistent XLA
    compilation cache, so the many tiny runs compile each program once instead of once per process. It lives in
    a fresh temporary folder, made by the first process (the workers inherit it) and deleted when that process
    ends; a cache folder the caller set is used as it is. Every program is kept, however quick its compile: the
    tiny runs' programs compile in well under a second each, and there are about twenty per run. With
    --tolerance-report, records how much of each tolerance the comparisons use (tolerances.py). The main.py
    processes the tests start keep their temporary files (log files among them) in one folder, removed at the end."""
    if SUBPROCESS_TEMP_ENV not in os.environ:
        os.environ[SUBPROCESS_TEMP_ENV] = config.subprocess_temp = tempfile.mkdtemp(prefix="fmnist-jax-test-temp-")
    if CACHE_ENV not in os.environ:
        os.environ[CACHE_ENV] = config.xla_cache_folder = tempfile.mkdtemp(prefix="fmnist-jax-xla-cache-")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    jax.config.update("jax_compilation_cache_dir", os.environ[CACHE_ENV])
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs", float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"])
    )
    tolerances.configure(config)


def pytest_unconfigure(config):
    for name in ("xla_cache_folder", "subprocess_temp"):
        if folder := getattr(config, name, None):
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> pathlib.Path:
    """320 training and 100 test images in gzip IDX files."""
    return fingerprints.tiny_data(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture
def cnn_config(tiny_data):
    """The CNN config on the tiny data: 64 validation, 256 training images (4 steps/epoch), 2 epochs."""
    return fingerprints.tiny_config(tiny_data)


@pytest.fixture(scope="session")
def real_data_dir() -> pathlib.Path:
    """The real Fashion-MNIST files, the official gzip ones (the tests check their checksums); missing ones fail in
    CI (never a silent skip there)."""
    if not (REAL_DATA_DIR / "train-images-idx3-ubyte.gz").exists():
        where = f"{REAL_DATA_DIR} (FMNIST_REAL_DATA_DIR, else FMNIST_DATA_DIR, else Debian's folder)"
        if os.environ.get("CI"):
            pytest.fail(f"the official gzip files of Fashion-MNIST are not in {where}: .ci/run must install them")
        pytest.skip(
            f"the official gzip files of Fashion-MNIST are not in {where}: apt-get install dataset-fashion-mnist"
        )
    return REAL_DATA_DIR


@pytest.fixture(scope="session")
def finished_tiny_run(tiny_data, tmp_path_factory) -> pathlib.Path:
    """A finished tiny run with checkpoints at steps 4, 6, 8 (every 2 steps, 3 kept), trained once per session."""
    config = fingerprints.tiny_config(tiny_data)
    config.checkpoint.every_steps = 2
    workdir = tmp_path_factory.mktemp("finished") / "done"
    run.run(config, workdir)
    return workdir


@pytest.fixture
def two_epoch_run(cnn_config, finished_tiny_run, tmp_path):
    """A copy of the finished tiny run (checkpoints at steps 4, 6, 8) with its config, for a test to change."""
    cnn_config.checkpoint.every_steps = 2
    shutil.copytree(finished_tiny_run, tmp_path / "done")
    return cnn_config, tmp_path / "done"
