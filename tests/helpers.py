"""Helpers the tests share: tiny Fashion-MNIST-shaped data sets as real IDX files, config loading, runs of
main.py in a subprocess."""

from __future__ import annotations

import gzip
import importlib.util
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
from flax import nnx

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUBPROCESS_TEMP_ENV = "FMNIST_TEST_SUBPROCESS_TMPDIR"  # set by conftest.py for the whole test run
sys.path.insert(0, str(ROOT))  # the configs/ package, as main.py sees it
# The real data for the `slow` tests: FMNIST_REAL_DATA_DIR, else the folder runs use (FMNIST_DATA_DIR), else Debian's.
REAL_DATA_DIR = pathlib.Path(
    os.environ.get("FMNIST_REAL_DATA_DIR") or os.environ.get("FMNIST_DATA_DIR") or "/usr/share/datasets/fashion-mnist"
)

# How far two runs of the study's tiny config (2 epochs, 8 steps) may drift apart when only rounding differs: another
# CPU kind, or another device count (the gradient's sum in another order). Measured on an AVX2 EPYC, 1 and 8 devices
# and XLA:CPU capped at AVX and SSE4_2 (docs/running.md, "Reproducibility across CPUs"): rounding moves the first
# step's gradient by 3e-7 of its scale; Adam then turns it into parameter differences of the order of the learning
# rate wherever an update's numerator is near zero, and after 8 steps the losses differ by up to 8.3e-4 (relative),
# the test probabilities by up to 2.3e-3, the predicted classes not at all. The bounds are 10x those figures: a 10%
# change of the learning rate or another seed moves the losses by 2-6% and fails them.
DRIFT_LOSS_RTOL = 1e-2
DRIFT_PROBS_ATOL = 2.5e-2


def rounded(digits: int) -> float:
    """How far round(x, digits) may move x: half a unit in its last place (and a hair for binary fractions)."""
    return 0.5 * 10.0**-digits * (1 + 1e-9)


def quotient_error(a: float, b: float, da: float, db: float) -> float:
    """How far a / b may lie from A / B, at worst, where |a - A| <= da and |b - B| <= db. A benchmark's ratio
    recomputed from its printed (rounded) figures is checked within this plus the ratio's own rounding, whatever the
    machine's speed makes of them: the smaller a time, the more its rounding moves a ratio of it."""
    assert abs(b) > db, f"{b} is within {db} of zero: nothing can be said of a quotient by it"
    return (abs(a) + da) / (abs(b) - db) - abs(a / b)


# The stronger CNN's recipe narrowed for tests, as dotted-path fields: the speedrun's one convolution per stage at
# narrow widths, with vgg_bn's dropout and moving average and random erasing on; batch 32 and 2 steps a call on the
# tiny data's 256 training images (8 steps an epoch), 2 epochs, evaluation batches of 48. tests/test_vgg_bn_runs.py
# trains it on configs/speedrun.py and test_report.py's fourth comparison member on configs/vgg_bn.py: the same
# maths, so the two share their compiled programs through the persistent cache.
NARROW_RECIPE = {
    "batch_size": 32,
    "num_epochs": 2,
    "steps_per_call": 2,
    "eval_batch_size": 48,
    "model.widths": (8, 16, 16),
    "model.depths": (1, 1, 1),
    "augment.erase_prob": 0.25,  # off in both configs; its determinism is tested too
    "model.dropout": 0.1,  # vgg_bn's, off in the speedrun
    "ema_decay": 0.999,  # vgg_bn's moving average, which the speedrun leaves out
}


def load_config(name: str, **overrides):
    """configs/<name>.py's get_config() with dotted-path overrides applied (like --config.FIELD=VALUE)."""
    spec = importlib.util.spec_from_file_location(f"configs_{name}", ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for path, value in overrides.items():
        *parents, leaf = path.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def main_args(name: str, workdir: str | os.PathLike, fields: dict) -> tuple[str, ...]:
    """main.py's arguments for configs/<name>.py in `workdir` with the dotted-path `fields` set (the command-line
    twin of `load_config(name, **fields)`; a tuple is written as its comma-separated items)."""
    values = {k: ",".join(map(str, v)) if isinstance(v, tuple) else v for k, v in fields.items()}
    return (f"--config=configs/{name}.py", f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in values.items()))


# The tiny run: the study's CNN on the tiny data set (`tiny_data`: 64 validation and 256 training images), 2 epochs
# of 4 steps, 2 a call; its fingerprint is recorded (tests/fingerprints.py). A test runs it with main.py where it
# needs a process of its own (to hold a lock, be stopped or killed, fill a disk, say how it ended) and in the test's
# process otherwise: `tiny_args` and `tiny_config` give the same config.
TINY_FIELDS = {"data.validation_size": 64, "eval_batch_size": 50, "steps_per_call": 2, "num_epochs": 2}


def tiny_args(data_dir: str | os.PathLike, workdir: str | os.PathLike, **overrides) -> tuple[str, ...]:
    """main.py's arguments for the tiny run in `workdir` with dotted-path `overrides`."""
    return main_args("cnn", workdir, {**TINY_FIELDS, "data.dir": data_dir, **overrides})


def tiny_config(data_dir: str | os.PathLike, **overrides):
    """The config `tiny_args` gives main.py."""
    return load_config("cnn", **{**TINY_FIELDS, "data.dir": str(data_dir), **overrides})


def last_line(text: str) -> str:
    """The last line of a process's output (where main.py says how it ended)."""
    return text.strip().splitlines()[-1]


@nnx.jit
def model_logits(model, x, dropout_key=None):
    """`model(x, dropout_key=dropout_key)` as one jitted program (without a key: the evaluation form, running
    statistics and no dropout): one compilation per form and input shape instead of one per operation."""
    return model(x, dropout_key=dropout_key)


def without_timings(history: list[dict]) -> list[dict]:
    """History records without their wall-clock fields (the epoch's seconds and images per second)."""
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_second")} for r in history]


def assert_same_run(workdir: str | os.PathLike, reference: str | os.PathLike) -> None:
    """The finished run in `workdir` has the finished `reference` run's history (timings apart) and final bits."""
    from fmnist_jax import metrics

    assert without_timings(metrics.read_history(workdir)) == without_timings(metrics.read_history(reference))
    assert metrics.load_results(workdir)["params_sha256"] == metrics.load_results(reference)["params_sha256"]


def make_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Learnable 28x28 uint8 images: noise plus a bright bar whose row encodes the class (`bar_classes`)."""
    images = rng.integers(0, 60, (len(labels), 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        images[i, 2 + 2 * c : 4 + 2 * c, 4:24] = 230
    return images


def bar_classes(images: np.ndarray) -> np.ndarray:
    """The class each of `make_images`'s images shows, read from its bar's first row (a flipped or shifted image,
    or one given another's label, shows another)."""
    return (np.argmax(images[:, :, 4:24].min(axis=2) == 230, axis=1) - 2) // 2


def idx_arrays(*, n_train: int, n_test: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`write_idx_dataset`'s arrays: {"train": (images, labels), "test": ...}."""
    rng, arrays = np.random.default_rng(seed), {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        arrays[split] = make_images(labels, rng), labels
    return arrays


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_dataset(
    directory: pathlib.Path, *, n_train: int, n_test: int, seed: int = 0, compress: bool = True
) -> pathlib.Path:
    """Writes the four Fashion-MNIST IDX files (gzip or raw) of a small learnable data set (`idx_arrays`)."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = idx_arrays(n_train=n_train, n_test=n_test, seed=seed)
    for prefix, (images, labels) in zip(("train", "t10k"), arrays.values(), strict=True):
        for kind, array, magic in (("images", images, 2051), ("labels", labels, 2049)):
            content = idx_bytes(array, magic)
            name = f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
            if compress:
                (directory / (name + ".gz")).write_bytes(gzip.compress(content))
            else:
                (directory / name).write_bytes(content)
    return directory


def run_main(
    *args: str, env: dict[str, str] | None = None, cwd: pathlib.Path = ROOT, timeout: float = 600, script: tuple = ()
) -> subprocess.CompletedProcess:
    """Runs `python main.py ARGS` in a subprocess (fresh JAX, so XLA_FLAGS can differ); with `script`, runs
    `python *script ARGS` instead (a wrapper such as tests/interrupt.py)."""
    full_env = subprocess_env(env)
    return subprocess.run(
        [sys.executable, *(script or (str(ROOT / "main.py"),)), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def run_interrupted(
    signal_name: str, at_step: int, when: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Runs `python main.py ARGS` until it sends itself SIG`signal_name` at the moment `at_step` and `when` name
    (tests/interrupt.py: a checkpoint's save "in_flight" or "committed", an "epoch"'s end, the "compile", a "step",
    a baseline's "fit", the "report"'s plots). Unlike a signal sent from outside once a checkpoint appears, the
    moment does not depend on the device's speed."""
    return run_main(*args, env=env, script=(str(ROOT / "tests" / "interrupt.py"), signal_name, str(at_step), when))


def snapshot(folder: pathlib.Path) -> dict[str, bytes]:
    """Every file below `folder`, by its path from there, with its bytes: to show a command changed nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def process_state(pid: int) -> str | None:
    """The state letter in /proc/PID/stat (Linux: T stopped, Z ended but not yet reaped), or None once it is gone."""
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def is_stopped(proc: subprocess.Popen) -> bool:
    """Whether `proc` is stopped (SIGSTOP)."""
    return process_state(proc.pid) == "T"


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
    """The step folders in WORKDIR/checkpoints, oldest first (complete ones: Orbax writes the others under
    temporary names)."""
    from fmnist_jax import config_lib

    return config_lib.checkpoint_steps(pathlib.Path(workdir))


def read_only_below(monkeypatch, folder: pathlib.Path) -> None:
    """`os.access` says nothing below `folder` (itself included) is writable, as on a read-only mount (root writes
    wherever chmod says not, so a chmod cannot show it)."""
    access = os.access

    def read_only(path, mode, **kwargs):
        path = pathlib.Path(path)
        return access(path, mode, **kwargs) and not (mode & os.W_OK and folder in (path, *path.parents))

    monkeypatch.setattr(os, "access", read_only)


def damage_checkpoint(workdir: str | os.PathLike, step: int) -> None:
    """Cuts the largest file of WORKDIR/checkpoints/STEP in half, as a crash while writing it would."""
    folder = pathlib.Path(workdir) / "checkpoints" / str(step)
    largest = max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(largest, "r+b") as f:
        f.truncate(largest.stat().st_size // 2)


DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def devices(n: int) -> dict[str, str]:
    """The environment of a subprocess that sees `n` fake CPU devices, this process's other XLA_FLAGS kept (a cap
    on the instruction set changes the bits: a subprocess without it would not compute as this process does)."""
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
    return {"XLA_FLAGS": " ".join([*kept, f"{DEVICE_COUNT_FLAG}={n}"])}


def check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """`result`, after asserting that its process succeeded (its stderr's tail as the message otherwise)."""
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def subprocess_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the repository first on PYTHONPATH (an existing PYTHONPATH kept after it,
    e.g. where packages are installed with --target) and the test run's temporary folder as TMPDIR (conftest.py's:
    the log files main.py keeps do not pile up in /tmp), updated by `env`."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    temp = os.environ.get(SUBPROCESS_TEMP_ENV)
    return {**os.environ, "PYTHONPATH": path, **({"TMPDIR": temp} if temp else {}), **(env or {})}


def start_main(*args: str, env: dict[str, str] | None = None, script: tuple = ()) -> subprocess.Popen:
    """Starts `python main.py ARGS` in the background (to be killed at a moment of the test's choosing); with
    `script`, `python *script ARGS` (as `run_main`)."""
    full_env = subprocess_env(env)
    return subprocess.Popen(
        [sys.executable, *(script or (str(ROOT / "main.py"),)), *args],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    """Polls `predicate` until it holds; fails if `proc` ends first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, (
            "the process ended before the awaited moment: " + (proc.communicate()[1] or "")[-2000:]
        )
        assert time.monotonic() < deadline, "the awaited moment never came"
        time.sleep(0.01)


def quick_compare_config(data_dir: pathlib.Path, *, beyond: bool = False, **overrides):
    """The quick comparison shrunk to the tiny data set (256 training and 64 validation images per member); the
    study's three members, and with `beyond` the stronger CNN too (one epoch)."""
    config = load_config("compare", quick=True, **overrides)
    for name in config.members:
        config.members[name].data.dir = str(data_dir)
    for name in ("cnn", "random_forest", "linear_svm", "vgg_bn"):
        config.quick_overrides[name].data.num_train = 256
        config.quick_overrides[name].data.validation_size = 64
    config.members.cnn.steps_per_call = 4
    config.members.vgg_bn.enabled = beyond
    config.members.vgg_bn.batch_size = 64
    config.quick_overrides.vgg_bn.num_epochs = 1
    return config


def by_check(lines: list[str]) -> dict[str, list[dict]]:
    """`python -m benchmarks accelerator_check`'s JSON lines among `lines`, grouped by their `check`."""
    import json

    rows = {}
    for row in (json.loads(line) for line in lines if line.startswith("{")):
        rows.setdefault(row["check"], []).append(row)
    return rows


def assert_every_check_reported(
    rows: dict[str, list[dict]], config, *, batches: list[int], count: int, epoch: int, eval_batch: int
) -> None:
    """The accelerator check's devices, each batch size, the evaluation (the tiny test split of 100 images in
    batches of `eval_batch`), the devices' agreement and bfloat16, consistent together."""
    import pytest

    assert "error" not in rows, rows["error"]  # a check that raised (tests/test_parallel.py reports it as a row)
    assert rows["devices"][0]["count"] == count == rows["devices"][0]["machine"]["devices"]
    assert rows["devices"][0]["machine"]["backend"] == "cpu" and rows["devices"][0]["machine"]["cpu"]
    train = rows["train"]
    assert [r["batch"] for r in train] == batches
    assert {r["model"] for r in train} == {config.model.name}
    assert all(r["epoch_images"] == epoch for r in train)  # the config's training split
    for r in train:  # a whole number of batches: epoch / the rate is the epoch's time, but for the rate's rounding
        assert epoch % r["batch"] == 0
        within = quotient_error(epoch, r["images_per_second"], 0, rounded(0)) + rounded(2)
        assert r["epoch_seconds"] == pytest.approx(epoch / r["images_per_second"], abs=within)
    evaluated = rows["evaluate"][0]
    assert evaluated["images"] == 100 and evaluated["batch"] == eval_batch and len(evaluated["seconds_per_pass"]) == 5
    assert evaluated["seconds"] == pytest.approx(sorted(evaluated["seconds_per_pass"])[2], abs=rounded(4))  # median
    agree = rows["devices_agree"][0]
    if count > 1:  # within the drift that rounding allows on every CPU kind, and `same` says whether within 1e-4
        one, many = (agree["mean_loss_by_devices"][k] for k in ("1", str(count)))
        assert many == pytest.approx(one, rel=DRIFT_LOSS_RTOL)
        assert agree["same"] is (abs(many - one) <= 1e-8 + 1e-4 * abs(one))  # np.allclose(rtol=1e-4)
    else:
        assert agree["skipped"] == "one device: nothing to compare"
    bf16, own = rows["bfloat16"][0], train[0]["compute_dtype"]  # the config's dtype: its train line's timing
    assert {r["compute_dtype"] for r in train} == {config.compute_dtype}
    assert train[0]["mean_loss"] == pytest.approx(bf16["mean_loss"][own], abs=1e-5)
    rates = bf16["images_per_second"]
    assert rates[own] == train[0]["images_per_second"]
    within = quotient_error(rates["bfloat16"], rates["float32"], rounded(0), rounded(0)) + rounded(2)
    assert rates["bfloat16"] > 0 and bf16["speedup"] == pytest.approx(rates["bfloat16"] / rates["float32"], abs=within)
    assert bf16["mean_loss"]["bfloat16"] == pytest.approx(bf16["mean_loss"]["float32"], rel=0.05)
