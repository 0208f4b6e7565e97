"""Data parallelism: 8 fake CPU devices give the 1-device maths; checkpoints move between device counts.

Each run is a `main.py` subprocess, so its XLA_FLAGS (the fake device count) apply before JAX starts.
"""

import socket
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT, check, devices, run_main, subprocess_env

from fmnist_jax import metrics


def tiny_args(tiny_data, workdir, *extra):
    return (
        f"--workdir={workdir}",
        "--config=configs/cnn.py",
        f"--config.data.dir={tiny_data}",
        "--config.data.validation_size=64",
        "--config.steps_per_call=2",
        "--config.eval_batch_size=48",
        *extra,
    )


@pytest.fixture(scope="module")
def one_device_run(tiny_data, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one")
    check(run_main(*tiny_args(tiny_data, workdir, "--config.num_epochs=2"), env=devices(1)))
    return workdir


def test_eight_devices_give_the_one_device_maths(tiny_data, tmp_path, one_device_run):
    result = check(run_main(*tiny_args(tiny_data, tmp_path, "--config.num_epochs=2"), env=devices(8)))
    assert "8 cpu device(s)" in result.stderr and "batch 64 (8 per device)" in result.stderr
    np.testing.assert_allclose(
        [r["train_loss"] for r in metrics.read_history(tmp_path)],
        [r["train_loss"] for r in metrics.read_history(one_device_run)],
        rtol=1e-4,
    )
    np.testing.assert_allclose(
        metrics.load_predictions(tmp_path)["probs"], metrics.load_predictions(one_device_run)["probs"], atol=1e-4
    )


def test_batch_size_the_devices_cannot_split_fails_before_compiling(tiny_data, tmp_path):
    result = run_main(*tiny_args(tiny_data, tmp_path, "--config.batch_size=60"), env=devices(8))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: config.batch_size=60 cannot be split over 8 devices; use a multiple of 8 (e.g. 56 or 64) "
        "or run on fewer devices."
    )
    assert "Traceback" not in result.stderr and not (tmp_path / "config.json").exists()


def test_an_eight_device_checkpoint_restores_on_one_device(tiny_data, tmp_path, one_device_run):
    """8 -> 1 here; 1 -> 8 is tests/test_vgg_bn_runs.py's (a BatchNorm model with the whole recipe)."""
    check(run_main(*tiny_args(tiny_data, tmp_path, "--config.num_epochs=1"), env=devices(8)))
    result = check(
        run_main(
            *tiny_args(tiny_data, tmp_path, "--config.num_epochs=2", "--config.resume_with_changes=True"),
            env=devices(1),
        )
    )
    assert "Resumed from checkpoint at step 4" in result.stderr
    assert "Mesh: 1 cpu device(s)" in result.stderr
    np.testing.assert_allclose(
        metrics.load_predictions(tmp_path)["probs"], metrics.load_predictions(one_device_run)["probs"], atol=1e-4
    )


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, []),
        ({"SLURM_NTASKS": "1"}, []),
        ({"SLURM_NTASKS": "4"}, ["SLURM_NTASKS"]),
        (
            {"OMPI_COMM_WORLD_SIZE": "2", "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"},
            ["JAX_COORDINATOR_ADDRESS", "OMPI_COMM_WORLD_SIZE"],
        ),
        ({"TPU_WORKER_HOSTNAMES": "localhost"}, []),
        ({"TPU_WORKER_HOSTNAMES": "t1,t2"}, ["TPU_WORKER_HOSTNAMES"]),
    ],
)
def test_multiprocess_jobs_are_recognised_from_the_environment(monkeypatch, env, expected):
    from fmnist_jax import parallel  # imports JAX

    for var in (
        "JAX_COORDINATOR_ADDRESS",
        "MEGASCALE_COORDINATOR_ADDRESS",
        "SLURM_NTASKS",
        "OMPI_COMM_WORLD_SIZE",
        "TPU_WORKER_HOSTNAMES",
    ):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert parallel._multiprocess_variables() == expected


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_as_one(tiny_data, tmp_path, one_device_run):
    """Two processes (2 fake devices each) joined by jax.distributed: the 1-device maths, files written once."""
    port = free_port()
    procs = []
    for pid in range(2):
        env = {
            **subprocess_env(),
            "JAX_PLATFORMS": "cpu",
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(pid),
            **devices(2),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "main.py"), *tiny_args(tiny_data, tmp_path, "--config.num_epochs=2")],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    assert all("jax.distributed.initialize" in e and "Mesh: 4 cpu device(s) over 2 process(es)" in e for e in errs)
    history = metrics.read_history(tmp_path)
    assert [r["epoch"] for r in history] == [1, 2]  # written by process 0 only
    np.testing.assert_allclose(
        [r["train_loss"] for r in history], [r["train_loss"] for r in metrics.read_history(one_device_run)], rtol=1e-4
    )
    np.testing.assert_allclose(
        metrics.load_predictions(tmp_path)["probs"], metrics.load_predictions(one_device_run)["probs"], atol=1e-4
    )
