"""main.py: flags, the default workdir, and one-line errors with exit status 2."""

import json

import pytest
from helpers import ROOT, run_main

from fmnist_jax import metrics


def last_line(result):
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["--config=configs/cnn.py", "--config.num_epoch=1"],
            'error: unknown config field: num_epoch Did you mean "num_epochs" instead of "num_epoch"?',
        ),
        (
            ["--config=configs/cnn.py", "--config.num_epochs=abc"],
            "error: flag --config.num_epochs=abc: invalid literal for int() with base 10: 'abc",
        ),
        (["--config=configs/missing.py"], "No such file or directory: 'configs/missing.py"),
        (
            ["--config=configs/cnn.py", "--config.data.dir=/nonexistent/fmnist"],
            "error: data folder /nonexistent/fmnist does not exist. Get Fashion-MNIST one of three ways",
        ),
        (
            ["--config=configs/cnn.py", "--config.data.validation_size=-5"],
            "error: config.data.validation_size=-5 must be zero or more.",
        ),
    ],
)
def test_expected_errors_are_one_line_and_exit_2(tmp_path, args, expected):
    result = run_main(*args, f"--workdir={tmp_path / 'w'}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert expected in last_line(result) and last_line(result).startswith("error: ")
    assert "Traceback" not in result.stderr


def test_default_workdir_is_runs_slash_config_name(tiny_data, tmp_path):
    result = run_main(
        f"--config={ROOT / 'configs' / 'cnn.py'}",
        "--config.num_epochs=1",
        f"--config.data.dir={tiny_data}",
        "--config.data.validation_size=64",
        "--config.steps_per_call=2",
        "--config.eval_batch_size=50",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    workdir = tmp_path / "runs" / "cnn"
    assert metrics.load_results(workdir)["num_params"] == 438_026
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["num_epochs"] == 1 and saved["data"]["validation_size"] == 64
    assert "epoch 1/1" in result.stderr and "test accuracy" in result.stderr
    assert "Renaming" not in result.stderr  # Orbax's INFO chatter is filtered out
