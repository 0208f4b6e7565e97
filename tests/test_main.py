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


def test_compilation_cache_off_on_cpu_by_default_and_a_folder_reused_to_the_same_bits(tiny_data, tmp_path):
    """`config.compilation_cache`: "auto" on a CPU (JAX given no folder) writes no cache; a folder named fills it,
    and a second run with the same folder compiles nothing new (every program found) and ends with the same bits;
    "off" writes nothing into the folder JAX was given."""
    no_jax_folder = {"JAX_COMPILATION_CACHE_DIR": "", "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    fields = ("--config=configs/cnn.py", f"--config.data.dir={tiny_data}", "--config.num_epochs=1")
    fields += ("--config.data.validation_size=64", "--config.data.num_train=128")

    def train(name, *extra, env):
        result = run_main(*fields, f"--workdir={tmp_path / name}", *extra, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        return metrics.load_results(tmp_path / name)["params_sha256"]

    reference = train("auto", env=no_jax_folder)
    assert not (tmp_path / "xdg").exists()
    folder = tmp_path / "cache"
    assert train("first", f"--config.compilation_cache={folder}", env=no_jax_folder) == reference
    entries = sorted(p.name for p in folder.iterdir())
    assert len(entries) >= 5  # the set-up, the train call, the evaluation, the copies
    assert train("second", f"--config.compilation_cache={folder}", env=no_jax_folder) == reference
    assert sorted(p.name for p in folder.iterdir()) == entries
    given = tmp_path / "given"
    given.mkdir()
    assert train("off", "--config.compilation_cache=off", env={"JAX_COMPILATION_CACHE_DIR": str(given)}) == reference
    assert list(given.iterdir()) == []
