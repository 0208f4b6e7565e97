"""Data parallelism: 8 fake CPU devices give the 1-device maths to rounding; checkpoints move between device counts.

A run on several devices is a `main.py` subprocess, so its XLA_FLAGS (the fake device count) apply before JAX
starts; a run on 1 device runs in this process (one CPU device).
"""

import contextlib
import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import types

import helpers
import numpy as np
import pytest
import tolerances
from helpers import (
    DRIFT_LOSS_RTOL,
    DRIFT_PROBS_ATOL,
    ROOT,
    assert_every_check_reported,
    by_check,
    check,
    checkpoint_steps,
    damage_checkpoint,
    devices,
    last_line,
    load_config,
    run_main,
    subprocess_env,
)

from fmnist_jax import config_lib, files, metrics, run

# main.py as a process that meets a fault the others do not (`python FAULTY_MAIN FAULT MAIN_ARGS...`).
FAULTY_MAIN = str(ROOT / "tests" / "faulty_main.py")

# The tiny run (helpers.TINY_FIELDS) with an evaluation batch that splits over 8 devices.
TINY = {**helpers.TINY_FIELDS, "eval_batch_size": 48}


def tiny_args(tiny_data, workdir, **overrides):
    """main.py's arguments for the tiny run in `workdir` with dotted-path `overrides`."""
    return helpers.tiny_args(tiny_data, workdir, **{**TINY, **overrides})


@pytest.fixture(scope="module")
def one_device_run(finished_tiny_run):
    """The tiny run on 1 device: the session's, trained in this process. Its checkpoints every 2 steps change
    nothing it computes; its evaluation batch of 50 (not 48) moves the test probabilities by rounding at most."""
    import jax

    assert jax.device_count() == 1
    return finished_tiny_run


# `python -c GRADIENTS_MAIN_CHECK DATA_DIR N MAIN_ARGS... CHECK_ARGS...` (N: how many of the arguments are
# MAIN_ARGS), in one process, so that one start of an 8-device process serves three stages: tests/device_grads.py on
# DATA_DIR (its JSON line on stdout); main.py with MAIN_ARGS; `python -m benchmarks accelerator_check CHECK_ARGS`
# through its own entry point (its JSON lines on stdout), whose train and evaluation programs are main.py's. A check
# that raises or exits prints one row {"check": "error", ...} and the process still succeeds: only its own test
# fails. The line CHECK_STAGE on stderr starts the check's stage.
CHECK_STAGE = "-- python -m benchmarks accelerator_check --"
GRADIENTS_MAIN_CHECK = f"""
import json, runpy, sys, traceback
sys.path.insert(0, {str(ROOT / "tests")!r})
data_dir, n_main, *rest = sys.argv[1:]
main_args, check_args = rest[: int(n_main)], rest[int(n_main) :]
sys.argv = [{str(ROOT / "tests" / "device_grads.py")!r}, data_dir]
runpy.run_path(sys.argv[0], run_name="__main__")
sys.stdout.flush()
sys.argv = [{str(ROOT / "main.py")!r}, *main_args]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:  # absl's app.run ends in sys.exit
    if e.code not in (0, None):
        raise
sys.stdout.flush()
print({CHECK_STAGE!r}, file=sys.stderr, flush=True)
sys.argv = ["benchmarks", "accelerator_check", *check_args]
try:
    runpy.run_module("benchmarks", run_name="__main__", alter_sys=True)
except (Exception, SystemExit) as e:
    print(json.dumps({{"check": "error", "error": repr(e), "traceback": traceback.format_exc()}}), flush=True)
"""

# The accelerator check on the tiny run's data, call and evaluation batch; a large batch equal to the config's is
# measured once (tests/test_platform.py measures two sizes on one device).
CHECK_ARGS = (
    "--steps=2",
    "--large_batch=64",
    *(f"--config.{k}={v}" for k, v in TINY.items() if k != "num_epochs"),
)


@pytest.fixture(scope="module")
def eight_device_run(tiny_data, tmp_path_factory):
    """The same run on 8 devices, a checkpoint at the end of each epoch, in a process that first computes the
    first step's gradient on 1 and on 8 devices and then runs the accelerator check: the workdir, main.py's
    stderr, tests/device_grads.py's output, and the check's JSON lines and stderr."""
    workdir = tmp_path_factory.mktemp("eight")
    main = tiny_args(tiny_data, workdir)
    check_args = (*CHECK_ARGS, f"--config.data.dir={tiny_data}")
    args = (str(tiny_data), str(len(main)), *main, *check_args)
    result = check(run_main(*args, env=devices(8), script=("-c", GRADIENTS_MAIN_CHECK)))
    lines, (stderr, check_stderr) = result.stdout.splitlines(), result.stderr.split(CHECK_STAGE)
    return types.SimpleNamespace(
        workdir=workdir,
        stderr=stderr,
        gradients=json.loads(lines[0]),
        checks=[line for line in lines[1:] if line.startswith('{"check"')],
        check_stderr=check_stderr,
    )


def assert_same_maths(workdir, reference):
    """The runs in `workdir` and `reference` agree as far as rounding lets them (tests/helpers.py)."""
    losses = [[r["train_loss"] for r in metrics.read_history(w)] for w in (workdir, reference)]
    np.testing.assert_allclose(*losses, rtol=DRIFT_LOSS_RTOL)
    probs = [metrics.load_predictions(w)["probs"] for w in (workdir, reference)]
    np.testing.assert_allclose(*probs, atol=DRIFT_PROBS_ATOL)
    # Measured: the same class for every test image; one whose two best classes are closer than the drift may swap.
    assert np.mean(probs[0].argmax(-1) == probs[1].argmax(-1)) >= 0.98


def test_the_first_steps_gradient_on_eight_devices_is_the_one_device_gradient_to_rounding(eight_device_run):
    """The gradient's sum runs in another order on 8 devices: float32 rounding apart, the same gradient. Measured
    up to 3e-7 of a parameter's largest gradient (float32's epsilon: 1.2e-7); the bound is 7x that."""
    out = eight_device_run.gradients
    assert out["devices"] == 8 and len(out["rows"]) == 10  # the 5 layers' kernels and biases
    for row in out["rows"]:
        assert row["largest"] > 0, row
        tolerances.assert_within(row["diff"] / row["largest"], 2e-6, row["parameter"])


def test_eight_devices_give_the_one_device_maths(eight_device_run, one_device_run):
    assert "8 cpu device(s)" in eight_device_run.stderr and "batch 64 (8 per device)" in eight_device_run.stderr
    assert_same_maths(eight_device_run.workdir, one_device_run)


def test_the_accelerator_check_runs_on_eight_devices_through_the_command_line(eight_device_run):
    rows = by_check(eight_device_run.checks)
    assert "error" not in rows, (rows["error"], eight_device_run.check_stderr[-3000:])
    assert_every_check_reported(rows, load_config("cnn"), batches=[64], count=8, epoch=256, eval_batch=48)
    agree = rows["devices_agree"][0]
    assert list(agree["mean_loss_by_devices"]) == ["1", "8"] and agree["steps"] == 4


def test_batch_size_the_devices_cannot_split_fails_before_compiling(tiny_data, tmp_path):
    result = run_main(*tiny_args(tiny_data, tmp_path, batch_size=60), env=devices(8))
    assert result.returncode == 2
    assert last_line(result.stderr) == (
        "error: config.batch_size=60 cannot be split over 8 devices; use a multiple of 8 (e.g. 56 or 64) "
        "or run on fewer devices."
    )
    assert "Traceback" not in result.stderr and not (tmp_path / "config.json").exists()
    (tmp_path / "checkpoints" / "4").mkdir(parents=True)  # a run trained with batch 60: another batch is refused
    (tmp_path / "config.json").write_text(json.dumps({"kind": "cnn", "batch_size": 60}))
    result = run_main(*tiny_args(tiny_data, tmp_path, batch_size=60), env=devices(8))
    assert result.returncode == 2 and last_line(result.stderr) == (
        f"error: config.batch_size=60 cannot be split over 8 devices; the run in {tmp_path / 'checkpoints'} trained "
        "with it: go on on a number of devices that divides it."
    )
    (tmp_path / "config.json").write_text(json.dumps({"kind": "cnn", "batch_size": 64}))  # trained with another
    result = run_main(*tiny_args(tiny_data, tmp_path, batch_size=60), env=devices(8))
    assert result.returncode == 2 and "use a multiple of 8 (e.g. 56 or 64)" in last_line(result.stderr)
    # Host overlap asked for on several CPU devices: refused as early, rather than risk XLA:CPU's deadlock.
    result = run_main(*tiny_args(tiny_data, tmp_path / "overlap", host_overlap="on"), env=devices(8))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert last_line(result.stderr).startswith("error: config.host_overlap='on' over 8 CPU devices: train calls")
    assert not (tmp_path / "overlap").exists()


def test_an_eight_device_checkpoint_restores_on_one_device(
    tiny_data, tmp_path, eight_device_run, one_device_run, caplog
):
    """8 -> 1 here (the 8-device run's epoch-1 checkpoint finished on 1 device, in this process); 1 -> 8 is
    tests/test_vgg_bn_runs.py's (a BatchNorm model with the whole recipe)."""
    shutil.copytree(eight_device_run.workdir, tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "8")
    for name in ("results.json", "predictions.npz"):
        (tmp_path / "run" / name).unlink()
    caplog.set_level(logging.INFO, logger="absl")
    run.run(helpers.tiny_config(tiny_data, **TINY), tmp_path / "run")
    assert "Resumed from checkpoint at step 4" in caplog.text
    assert "Mesh: 1 cpu device(s)" in caplog.text
    assert_same_maths(tmp_path / "run", one_device_run)


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, []),
        ({"SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1"}, []),
        ({"SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "4"}, ["SLURM_STEP_NUM_TASKS"]),  # srun -n4
        ({"SLURM_NTASKS": "4"}, []),  # a batch script or an allocation's shell (salloc -n4): one process
        ({"SLURM_NTASKS": "4", "SLURM_STEP_ID": "4294967290", "SLURM_STEP_NUM_TASKS": "1"}, []),  # an interactive step
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
        "SLURM_STEP_ID",
        "SLURM_STEP_NUM_TASKS",
        "OMPI_COMM_WORLD_SIZE",
        "TPU_WORKER_HOSTNAMES",
    ):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert parallel._multiprocess_variables() == expected


def test_a_multi_process_job_described_in_part_is_one_line(tiny_data, tmp_path):
    """A job step's variables without what JAX needs to join it (a coordinator): one line naming them, not
    initialize's traceback."""
    env = {**subprocess_env(), "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2", "JAX_PLATFORMS": "cpu"}
    for var in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "JAX_COORDINATOR_ADDRESS"):
        env.pop(var, None)
    result = run_main(*tiny_args(tiny_data, tmp_path), env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert last_line(result.stderr).startswith("error: jax.distributed.initialize failed (")
    assert "the environment's SLURM_STEP_NUM_TASKS describe a multi-process job" in last_line(result.stderr)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# What the two-process tests check is how the processes act together: they compare bits only with each other's runs
# (with this process's one-device run only to rounding), so their XLA compiles without LLVM's optimisations. A
# multi-process job on CPUs keeps no compiled programs (fmnist_jax/compile_cache.py), so every start compiles its ~50
# programs: in 3 s instead of 8 so (2 cores of an AVX-512 EPYC).
QUICK_COMPILE_FLAG = "--xla_backend_optimization_level=0"


JOB_TIMEOUT = 600  # seconds: a hang's limit (a start compiles ~50 programs; a slow shared machine takes minutes)


def start_two_processes(args, *, scripts=((), ())):
    """Two main.py processes (2 fake devices each) joined by jax.distributed, compiling quickly (QUICK_COMPILE_FLAG);
    process i runs `python *scripts[i] ARGS` when scripts[i] names a wrapper. Returns their (return code, stderr)
    pairs; fails the test when they have not both ended within JOB_TIMEOUT seconds (one waiting for the other in a
    collective), once both are killed."""
    xla_flags = f"{devices(2)['XLA_FLAGS']} {QUICK_COMPILE_FLAG}"
    port = free_port()
    procs = []
    for pid, script in enumerate(scripts):
        env = {
            **subprocess_env(),
            "JAX_PLATFORMS": "cpu",
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(pid),
            "XLA_FLAGS": xla_flags,
        }
        command = [sys.executable, *(script or (str(ROOT / "main.py"),)), *args]
        procs.append(
            subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    try:
        errs = [p.communicate(timeout=JOB_TIMEOUT)[1] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        errs = [p.communicate()[1] for p in procs]
        pytest.fail(f"the two processes had not ended after {JOB_TIMEOUT} s:\n" + "\n".join(e[-1500:] for e in errs))
    return [(p.returncode, e) for p, e in zip(procs, errs, strict=True)]


@pytest.fixture(scope="module")
def two_process_run(tiny_data, tmp_path_factory):
    """The tiny run by two processes (2 fake devices each) joined by jax.distributed: its workdir and their stderr."""
    workdir = tmp_path_factory.mktemp("two_processes")
    (rc0, err0), (rc1, err1) = start_two_processes(tiny_args(tiny_data, workdir))
    assert (rc0, rc1) == (0, 0), err0[-2000:] + err1[-2000:]
    return workdir, (err0, err1)


def test_a_comparison_in_a_two_process_job_joins_it_before_its_checks_start_jax(tiny_data, tmp_path):
    """Both processes join the job before the lock and before a CNN member's check starts JAX (initialize refuses
    to after), stop together when only process 0 meets the lock (the comparison's, or a baseline member's), train
    the CNN member together and run every other member too (none may end early: JAX's exit waits for every process
    for 5 minutes, then ends the others); whether a named member's run is finished is process 0's to say."""
    members = [f"--config.members.{m}.enabled=False" for m in ("linear_svm", "vgg_bn")]
    small = [
        f"--config.quick_overrides.{m}.{k}"
        for m in ("cnn", "random_forest")
        for k in ("data.num_train=256", "data.validation_size=64")
    ]
    args = [
        *("--config=configs/compare.py", f"--workdir={tmp_path}", "--config.quick=True", "--config.seeds=0"),
        *(*members, *small, "--config.quick_overrides.cnn.num_epochs=1"),
        *(f"--config.members.{m}.data.dir={tiny_data}" for m in ("cnn", "random_forest")),
    ]
    with files.workdir_lock(tmp_path):  # in use: process 0 alone meets the lock, and both stop at once
        (rc0, err0), (rc1, err1) = start_two_processes(args)
    assert (rc0, rc1) == (2, 2) and "is in use by process " in last_line(err0), err0[-2000:]
    assert last_line(err1) == (
        f"error: process 0 stopped the run (the workdir {tmp_path} could not be locked); its error says why."
    )
    (rc0, err0), (rc1, err1) = start_two_processes(args)
    assert (rc0, rc1) == (0, 0), err0[-2000:] + err1[-2000:]
    assert all("Mesh: 4 cpu device(s) over 2 process(es)" in e for e in (err0, err1))
    assert all("random_forest, seed 0: running" in e for e in (err0, err1))
    named = [*args, f"--config.members.cnn.workdir={tmp_path / 'cnn' / 'seed_{seed}'}"]
    (rc0, err0), (rc1, err1) = start_two_processes(named)  # process 0 decides the named run is finished
    assert (rc0, rc1) == (0, 0) and all("cnn, seed 0: reusing the finished run" in e for e in (err0, err1))
    forest = tmp_path / "random_forest" / "seed_0"
    assert (tmp_path / "report.md").exists() and (forest / "results.json").exists()
    (forest / "results.json").unlink()  # to be scored again, in a workdir another process holds: both stop at once
    with files.workdir_lock(forest):
        (rc0, err0), (rc1, err1) = start_two_processes(named)
    assert (rc0, rc1) == (2, 2) and "is in use by process " in last_line(err0), err0[-2000:] + err1[-2000:]
    assert (
        last_line(err1)
        == f"error: process 0 stopped the run (the workdir {forest} could not be locked); its error says why."
    )


def test_a_comparisons_checks_that_process_0_alone_makes_stop_both_processes(tiny_data, tmp_path):
    """Process 0 alone checks a member's named folder and the data the members read, before anything trains; where
    it refuses, process 1 stops with it at once (without the agreement it waited minutes for process 0, then failed)."""
    other = helpers.write_idx_dataset(tmp_path / "other", n_train=320, n_test=100, seed=7)
    args = [
        *(
            "--config=configs/compare.py",
            f"--workdir={tmp_path / 'compare'}",
            "--config.quick=True",
            "--config.seeds=0",
        ),
        *(f"--config.members.{m}.enabled=False" for m in ("linear_svm", "vgg_bn")),
        f"--config.members.cnn.data.dir={tiny_data}",
    ]
    for extra, what, why in [
        ((f"--config.members.random_forest.workdir={tmp_path / 'typo'}",), "a member's named folder", "does not exist"),
        ((f"--config.members.random_forest.data.dir={other}",), "the data the members read", "read other test images"),
    ]:
        (rc0, err0), (rc1, err1) = start_two_processes([*args, *extra])
        assert (rc0, rc1) == (2, 2) and why in last_line(err0), err0[-2000:] + err1[-2000:]
        assert last_line(err1) == f"error: process 0 stopped the run ({what}); its error says why.", err1[-2000:]
    assert not list((tmp_path / "compare").glob("*/seed_*"))  # nothing trained


def test_two_processes_train_as_one_and_agree_that_a_run_is_finished(tiny_data, two_process_run, one_device_run):
    """Two processes (2 fake devices each) joined by jax.distributed: the 1-device maths, files written once. A
    rerun is finished for both even where process 1 cannot see results.json (storage that is not shared)."""
    workdir, errs = two_process_run
    assert all("jax.distributed.initialize" in e and "Mesh: 4 cpu device(s) over 2 process(es)" in e for e in errs)
    assert all("A multi-process job on CPUs keeps no compiled programs" in e for e in errs)  # the tests give a folder
    history = metrics.read_history(workdir)
    assert [r["epoch"] for r in history] == [1, 2]  # written by process 0 only
    assert_same_maths(workdir, one_device_run)
    results = (workdir / "results.json").read_bytes()
    rerun = start_two_processes(tiny_args(tiny_data, workdir), scripts=((), (FAULTY_MAIN, "unseen-results")))
    assert [rc for rc, _ in rerun] == [0, 0], rerun[0][1][-2000:] + rerun[1][1][-2000:]
    assert all("Run already finished (8 steps)" in e for _, e in rerun)
    assert (workdir / "results.json").read_bytes() == results and len(metrics.read_history(workdir)) == 2


def test_evaluate_in_a_two_process_job_takes_the_trained_fields_process_0_read(tiny_data, two_process_run, tmp_path):
    """`mode=evaluate` without the run's data flags, in a two-process job where process 1 cannot see config.json
    (storage that is not shared): both take the fields process 0 read from it (alone, process 1 would hold out
    another split, and the processes would disagree), and score the run as its end did."""
    workdir = tmp_path / "run"
    shutil.copytree(two_process_run[0], workdir)
    trained = metrics.load_results(workdir)
    args = ["--config=configs/cnn.py", f"--workdir={workdir}", f"--config.data.dir={tiny_data}"]
    args += ["--config.mode=evaluate", "--config.eval_batch_size=48"]
    (rc0, err0), (rc1, err1) = start_two_processes(args, scripts=((), (FAULTY_MAIN, "unseen-config")))
    assert (rc0, rc1) == (0, 0), err0[-2000:] + err1[-2000:]
    taken = f"evaluate: as {workdir} was trained (its config.json): data.validation_size=64, num_epochs=2."
    assert all(taken in e for e in (err0, err1))
    scored = metrics.load_results(workdir)
    assert scored["params_sha256"] == trained["params_sha256"]
    for split in ("validation", "test"):
        assert scored[f"{split}_accuracy"] == pytest.approx(trained[f"{split}_accuracy"], abs=1e-6)
    # With a setting other than the run's, scored apart: process 1 knows it from process 0's reading too.
    own = (workdir / "results.json").read_bytes()
    (rc0, err0), (rc1, err1) = start_two_processes(
        [*args, "--config.tta_flip=True"], scripts=((), (FAULTY_MAIN, "unseen-config"))
    )
    assert (rc0, rc1) == (0, 0), err0[-2000:] + err1[-2000:]
    apart = workdir / "evaluate_step_8_tta_flip=True"
    said = f"Settings other than the run's (tta_flip=True): scored apart from its results, into {apart}"
    assert all(said in e for e in (err0, err1)) and (workdir / "results.json").read_bytes() == own
    assert metrics.load_results(apart)["params_sha256"] == trained["params_sha256"]


@pytest.mark.parametrize(
    "at, when, line, epochs",
    [
        ("2", "step", "SIGTERM: checkpoint saved at step 4 ", [1]),
        ("0", "compile", "SIGTERM before training began: nothing trained, nothing saved", []),
        ("2", "epoch", "SIGTERM: checkpoint saved at step 8 ", [1, 2]),  # as the last boundary is read
    ],
    ids=["mid_epoch", "compiling", "last_boundary"],
)
def test_a_signal_to_one_process_stops_both_at_the_same_point(
    tiny_data, tmp_path, two_process_run, at, when, line, epochs
):
    """SIGTERM to process 1 alone, mid-epoch (once the call up to step 2 of 4 is queued), as the programs compile, or
    once the last epoch's end is read: both processes train on to the epoch's end and save there, or stop before
    training, or stop before the final evaluation, and exit 143 together (one stopping alone would leave the other
    waiting in its next collective); the rerun ends with the uninterrupted two-process run's bits (stopped before
    training, the workdir holds nothing a rerun would go on from: the rerun is the fixture's run)."""
    args = tiny_args(tiny_data, tmp_path)
    signal_one = (str(ROOT / "tests" / "interrupt.py"), "TERM", at, when)
    stopped = start_two_processes(args, scripts=((), signal_one))
    errs = "".join(e[-2000:] for _, e in stopped)
    assert [rc for rc, _ in stopped] == [128 + signal.SIGTERM] * 2, errs
    assert all(line in e for _, e in stopped), errs
    assert [r["epoch"] for r in metrics.read_history(tmp_path)] == epochs
    if not epochs:  # stopped before training: nothing a rerun goes on from, so it is a fresh run (the fixture's)
        assert config_lib.kept_nothing(tmp_path) and not checkpoint_steps(tmp_path)
        return
    rerun = start_two_processes(args)
    assert [rc for rc, _ in rerun] == [0, 0], "".join(e[-2000:] for _, e in rerun)
    where = {1: "step 4 (epoch 2, 0/4 steps into it)", 2: "step 8 (training done; the final evaluation follows)"}
    resumed = [f"Resumed from checkpoint at {where.get(len(epochs))}" in e for _, e in rerun]
    assert resumed == [bool(epochs)] * 2
    uninterrupted = two_process_run[0]
    assert metrics.load_results(tmp_path)["params_sha256"] == metrics.load_results(uninterrupted)["params_sha256"]
    losses = [
        [(r["train_loss"], r["validation_loss"]) for r in metrics.read_history(w)] for w in (tmp_path, uninterrupted)
    ]
    assert losses[0] == losses[1]


@pytest.mark.parametrize("refusal", ["another_config", "locked"])
def test_what_only_process_0_refuses_stops_both_processes_at_once(tiny_data, two_process_run, refusal):
    """A refusal only process 0 meets (its workdir's config.json differs, or the workdir is locked by another run)
    ends both processes at once with one line each, exit 2 (process 1 waited ~30 s in a collective and ended with a
    traceback); the finished run is untouched."""
    workdir = two_process_run[0]
    results = (workdir / "results.json").read_bytes()
    overrides = {"learning_rate": 0.5} if refusal == "another_config" else {}
    with files.workdir_lock(workdir) if refusal == "locked" else contextlib.nullcontext():
        stopped = start_two_processes(tiny_args(tiny_data, workdir, **overrides))
    (rc0, err0), (rc1, err1) = stopped
    assert (rc0, rc1) == (2, 2), err0[-2000:] + err1[-2000:]
    said = "holds a run with a different config (learning_rate: " if overrides else "is in use by process "
    assert said in last_line(err0)
    why = f"{workdir} holds a run with another config" if overrides else f"the workdir {workdir} could not be locked"
    assert last_line(err1) == f"error: process 0 stopped the run ({why}); its error says why."
    assert "Traceback" not in err0 + err1 and (workdir / "results.json").read_bytes() == results


@pytest.mark.parametrize(
    "when, writing",
    [
        ("1", "writing the history and events of {}"),
        ("results", "writing the results in {}"),
        ("events", "writing the results in {}"),
    ],
    ids=["history", "results", "events"],
)
def test_a_full_disk_under_process_0_stops_both_processes_at_once(tiny_data, tmp_path, when, writing):
    """Process 0 alone writes the history, events and results; when its disk fills (at epoch 1's end, at the test
    predictions after training, or at the test scores' events before the results), both processes stop with one line
    each, exit 2 (process 1 waited in its next collective, or went on to a comparison's next member, until the job's
    time-outs ended it)."""
    full_disk = (FAULTY_MAIN, f"full-disk:{when}")
    (rc0, err0), (rc1, err1) = start_two_processes(tiny_args(tiny_data, tmp_path), scripts=(full_disk, ()))
    assert (rc0, rc1) == (2, 2), err0[-2000:] + err1[-2000:]
    assert last_line(err0).startswith(f"error: the disk holding {tmp_path} is full")
    assert last_line(err1) == (f"error: process 0 stopped the run ({writing.format(tmp_path)}); its error says why.")
    assert "Traceback" not in err0 + err1
    assert not (tmp_path / "results.json").exists()  # the final events are written before the results


def test_a_save_that_fails_in_the_background_on_process_1_stops_both_at_the_same_point(
    tiny_data, tmp_path, two_process_run
):
    """Process 1's background save of checkpoint 4 fails (a full disk), found when the next save waits for it:
    every process agrees on the last save's outcome before saving again, so both stop there, exit 2, with one line
    each (process 0 alone would have saved step 8 and waited for process 1 in Orbax's commit); the rerun resumes
    from step 4 and ends with the uninterrupted two-process run's bits."""
    args = tiny_args(tiny_data, tmp_path)
    stopped = start_two_processes(args, scripts=((), (FAULTY_MAIN, "failed-save:4")))
    (rc0, err0), (rc1, err1) = stopped
    assert (rc0, rc1) == (2, 2), err0[-2000:] + err1[-2000:]
    checkpoints_dir = tmp_path / "checkpoints"
    assert last_line(err0) == (
        f"error: a checkpoint save to {checkpoints_dir} failed on another process of the job; its error says why."
    )
    assert last_line(err1).startswith(f"error: the disk holding {tmp_path} is full (no space left while saving")
    assert "Traceback" not in err0 + err1
    assert checkpoint_steps(tmp_path) == [4] and not (tmp_path / "results.json").exists()
    rerun = start_two_processes(args)
    assert [rc for rc, _ in rerun] == [0, 0], "".join(e[-2000:] for _, e in rerun)
    assert all("Resumed from checkpoint at step 4 " in e for _, e in rerun)
    uninterrupted = two_process_run[0]
    assert metrics.load_results(tmp_path)["params_sha256"] == metrics.load_results(uninterrupted)["params_sha256"]


def test_a_damaged_checkpoint_is_set_aside_for_every_process(tiny_data, tmp_path, two_process_run):
    """Process 0 moves the damaged newest checkpoint aside; every process must then forget it, or process 1's Orbax
    would skip saving that step again when training reaches it, and process 0 would wait for it (a hang). The rerun
    ends with the uninterrupted two-process run's bits."""
    workdir = tmp_path / "run"
    shutil.copytree(two_process_run[0], workdir)
    (workdir / "results.json").unlink()
    damage_checkpoint(workdir, 8)
    rerun = start_two_processes(tiny_args(tiny_data, workdir))
    assert [rc for rc, _ in rerun] == [0, 0], "".join(e[-2000:] for _, e in rerun)
    assert all("Resumed from checkpoint at step 4 " in e for _, e in rerun)
    assert (workdir / "checkpoints_damaged" / "8").is_dir() and checkpoint_steps(workdir)[-1] == 8
    assert metrics.load_results(workdir)["params_sha256"] == metrics.load_results(two_process_run[0])["params_sha256"]
