"""Checkpoints that survive anything: SIGKILL and SIGTERM at any moment, damaged and leftover folders,
restore for evaluation and prediction, unwritable workdirs."""

import contextlib
import copy
import errno
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import types

import helpers
import jax
import pytest
from helpers import assert_same_run, checkpoint_steps, run_interrupted

from fmnist_jax import checkpoints, config_lib, files, machine, metrics, ops, parallel, preemption, report, run
from fmnist_jax.errors import CheckpointError, ConfigError, Interrupted, UserError
from fmnist_jax.training import evaluate, loop
from fmnist_jax.training import state as train_state
from fmnist_jax.training import step as train_step

# The session's finished tiny run (2 epochs of 4 steps, a checkpoint every 2 steps), keeping 2 checkpoints.
KILL_FIELDS = {**helpers.TINY_FIELDS, "checkpoint.every_steps": 2, "checkpoint.max_to_keep": 2}


def main_args(tiny_data, workdir) -> tuple[str, ...]:
    """The tiny study run: 2 epochs of 4 steps, a checkpoint every 2 steps."""
    return helpers.tiny_args(tiny_data, workdir, **KILL_FIELDS)


def finish(tiny_data, workdir, caplog) -> str:
    """Runs `main_args`'s config to the end in this process (its config.json must match the command line's); returns
    what it logged."""
    caplog.clear()
    caplog.set_level(logging.INFO)
    run.run(helpers.tiny_config(tiny_data, **KILL_FIELDS), workdir)
    return caplog.text


@pytest.fixture(scope="module")
def reference(finished_tiny_run):
    """The uninterrupted run: the session's finished tiny run, the same training in this process (it keeps 3
    checkpoints where these runs keep 2)."""
    return finished_tiny_run


@pytest.mark.parametrize("when", ["committed", "in_flight"], ids=["after_3_checkpoints", "during_a_save"])
def test_sigkill_anywhere_then_rerun_gives_bit_identical_parameters(tiny_data, tmp_path, reference, when, caplog):
    """SIGKILL once the third checkpoint (step 6, mid-epoch) is complete, or while it is being written
    (tests/interrupt.py sends it from inside the run, so that the moment is the same on a fast accelerator); the
    rerun resumes and ends with the uninterrupted bits. The run killed during a save reads its boundaries while the
    next steps are queued, as on a GPU (`config.host_overlap`); the rerun, at once, as on a CPU."""
    overlap = ("--config.host_overlap=on",) if when == "in_flight" else ()
    killed = run_interrupted("KILL", 6, when, *main_args(tiny_data, tmp_path), *overlap)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "results.json").exists()
    complete = checkpoint_steps(tmp_path)
    assert max(complete) == (6 if when == "committed" else 4)  # in flight: step 6's commit held back
    assert "Resumed from checkpoint at step" in finish(tiny_data, tmp_path, caplog)
    assert_same_run(tmp_path, reference)


def interrupt(tiny_data, workdir, signum, at_step, *extra):
    """Runs the tiny run (with `extra` arguments) until it sends itself `signum` at checkpoint `at_step`; checks the
    exit and its two last lines; returns the step the run says it saved."""
    args = (*main_args(tiny_data, workdir), *extra)
    result = run_interrupted(signal.Signals(signum).name[3:], at_step, "committed", *args)
    assert result.returncode == 128 + signum, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()
    assert last[-2].startswith(f"interrupted ({signal.Signals(signum).name}: checkpoint saved at step ")
    saved = int(last[-2].split("at step ")[1].split()[0])
    assert saved >= at_step and max(checkpoint_steps(workdir)) == saved
    assert "main.py" in last[-1] and "--workdir=" in last[-1]
    return saved


def test_sigterm_and_sigint_save_then_exit_with_resume_line(tiny_data, tmp_path, reference, caplog):
    """SIGTERM, then SIGINT on the resumed run: each saves and exits 128 + signal; the third run finishes with the
    uninterrupted bits. The first reads its boundaries while the next steps are queued (`config.host_overlap`)."""
    saved = interrupt(tiny_data, tmp_path, signal.SIGTERM, 2, "--config.host_overlap=on")
    resumed = interrupt(tiny_data, tmp_path, signal.SIGINT, at_step=saved + 2)
    assert resumed > saved
    assert f"Resumed from checkpoint at step {resumed} " in finish(tiny_data, tmp_path, caplog)
    assert_same_run(tmp_path, reference)


@pytest.mark.parametrize("name, when", [("INT", "scoring"), ("TERM", "scoring"), ("TERM", "release")])
def test_a_signal_during_the_final_scoring_is_one_line_and_the_rerun_scores(
    tiny_data, tmp_path, reference, caplog, name, when
):
    """The final scoring has no safe point to stop at (every step is trained and saved): Ctrl-C or SIGTERM there ends
    main.py at once, with one line and the command to go on with (not a traceback, nor nothing at all, SIGTERM's
    default), as does one that training's guard caught just as the scoring began ("release"); the rerun scores the
    last checkpoint, with the uninterrupted bits."""
    result = run_interrupted(name, 0, when, *main_args(tiny_data, tmp_path))
    signum = signal.Signals[f"SIG{name}"]
    assert result.returncode == 128 + signum and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-2] == (
        f"interrupted (SIG{name}, before the run had finished). Go on with the same command:"
    )
    assert not (tmp_path / "results.json").exists()
    assert "Resumed from checkpoint at step 8 " in finish(tiny_data, tmp_path, caplog)
    assert_same_run(tmp_path, reference)


def test_a_resume_that_changes_the_rounding_says_its_bits_are_no_longer_exact(tiny_data, tmp_path, reference, caplog):
    """`model.conv` and `scan_unroll` (and, with the scan unrolled, `steps_per_call` and `checkpoint.every_steps`)
    change how fast, and the rounding: a resume that changes one trains on, with a warning naming it, as one on
    another machine does; one that changes `steps_per_call` under the rolled scan keeps the bits, without it."""
    shutil.copytree(reference, tmp_path / "run")
    for name in ("results.json", "predictions.npz"):
        (tmp_path / "run" / name).unlink()
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "8")
    keep = tmp_path / "kept"
    shutil.copytree(tmp_path / "run", keep)
    caplog.set_level(logging.INFO)
    fields = {**KILL_FIELDS, "checkpoint.max_to_keep": 3}  # the reference's
    run.run(helpers.tiny_config(tiny_data, **{**fields, "steps_per_call": 1}), tmp_path / "run")
    assert "Resumed from checkpoint at step 6 " in caplog.text and "change the rounding" not in caplog.text
    assert_same_run(tmp_path / "run", reference)
    caplog.clear()
    run.run(helpers.tiny_config(tiny_data, **{**fields, "scan_unroll": "full", "steps_per_call": 1}), keep)
    assert (
        "Checkpoint 6 was trained with scan_unroll='auto' (now 'full'), steps_per_call=2 (now 1): these speed "
        "settings change the rounding, so the run trains on as usual but no longer to an uninterrupted run's exact"
    ) in caplog.text


def test_the_rounding_settings_are_compared_as_they_resolve_and_only_where_recorded(cnn_config):
    """`auto` and the form it picks here are the same settings (no warning); another form is not; a checkpoint whose
    config predates a field is not compared on it; call lengths count only where the scan is unrolled."""
    from fmnist_jax.training.plan import rounding_changes

    saved = config_lib.to_dict(cnn_config)
    picked = ops.resolve_conv("auto", jax.default_backend())
    same = copy.deepcopy(cnn_config)
    same.model.conv, same.scan_unroll = picked, "rolled"  # what `auto` resolves to for both, here
    assert rounding_changes(saved, same) == {}
    other = copy.deepcopy(cnn_config)
    other.model.conv = "taps" if picked != "taps" else "im2col"
    assert list(rounding_changes(saved, other)) == ["model.conv"]
    older = copy.deepcopy(saved)
    del older["model"]["conv"]  # a checkpoint from before the field
    assert rounding_changes(older, other) == {}
    longer = copy.deepcopy(cnn_config)
    longer.steps_per_call += 1
    assert rounding_changes(saved, longer) == {}  # the rolled scan: the same bits (the resume test's first run)
    longer.scan_unroll = "full"
    assert set(rounding_changes(saved, longer)) == {"scan_unroll", "steps_per_call"}
    rolled = copy.deepcopy(cnn_config)  # back from the unrolled scan to the rolled one: either side's unrolling counts
    rolled.steps_per_call += 2
    assert set(rounding_changes(config_lib.to_dict(longer), rolled)) == {"scan_unroll", "steps_per_call"}
    if jax.default_backend() == "cpu":  # in bfloat16 `auto` trains the deeper layers tap by tap there, not im2col
        mixed = copy.deepcopy(cnn_config)
        mixed.compute_dtype = "bfloat16"
        patches = copy.deepcopy(mixed)
        patches.model.conv = "im2col"
        assert list(rounding_changes(config_lib.to_dict(mixed), patches)) == ["model.conv"]
        assert rounding_changes(saved, mixed) == {}  # the dtype changed (resume_with_changes): not its forms' say


def test_a_signal_from_outside_stops_a_one_process_run_within_two_calls(tmp_path, caplog):
    """The host queues train calls far faster than they run. A SIGINT that comes while it waits for the devices
    (here from another thread, once the call reaching step 4 has run) stops the run within `CallQueue.DEPTH` calls
    of that one on a CPU, mid-epoch; the rerun resumes there and trains the rest once."""
    data_dir = helpers.write_idx_dataset(tmp_path / "data", n_train=2624, n_test=100)  # 2,560 training images
    fields = {**KILL_FIELDS, "batch_size": 32, "steps_per_call": 1, "num_epochs": 1, "checkpoint.every_steps": 0}
    workdir = tmp_path / "run"
    result = run_interrupted("INT", 4, "ran", *helpers.tiny_args(data_dir, workdir, **fields))
    assert result.returncode == 128 + signal.SIGINT, result.stderr[-2000:]
    saved = checkpoint_steps(workdir)
    assert len(saved) == 1 and f"checkpoint saved at step {saved[0]} " in result.stderr
    # Two calls after step 4's, and ten more (about 0.2 s) for the signalling thread to wake on a loaded machine;
    # with the whole epoch queued the run stopped far later. A GPU or TPU run queues up to an epoch (its calls take
    # well under a millisecond): there only the resume is checked.
    assert 4 <= saved[0] <= (16 if jax.default_backend() == "cpu" else 80), result.stderr[-2000:]
    caplog.set_level(logging.INFO)
    run.run(helpers.tiny_config(data_dir, **fields), workdir)
    assert f"Resumed from checkpoint at step {saved[0]} (epoch 1, {saved[0]}/80 steps into it)" in caplog.text
    assert [r["step"] for r in metrics.read_history(workdir)] == [80]


def test_a_signal_while_the_last_epoch_is_read_still_stops_with_the_resume_line(tiny_data, tmp_path, reference, caplog):
    """With host overlap the last boundary is read after the last train call: a SIGTERM then (here right after epoch
    2's history line) still exits 128 + signal with the resume line, its checkpoint (the last step's) saved; the
    rerun only scores it, with the uninterrupted bits."""
    args = (*main_args(tiny_data, tmp_path), "--config.host_overlap=on")
    result = run_interrupted("TERM", 2, "epoch", *args)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
    assert "checkpoint saved at step 8 " in result.stderr and not (tmp_path / "results.json").exists()
    assert "Resumed from checkpoint at step 8 " in finish(tiny_data, tmp_path, caplog)
    assert_same_run(tmp_path, reference)


def test_a_signal_before_training_stops_with_nothing_to_save(tiny_data, tmp_path, reference, caplog):
    """SIGTERM as a fresh run starts compiling: exit 128 + signal and the resume line, no checkpoint, no history.
    SIGINT as the run resumed from step 4 compiles: its checkpoints and history stay as they were. The rerun ends
    with the uninterrupted bits."""
    args = main_args(tiny_data, tmp_path)
    fresh = run_interrupted("TERM", 0, "compile", *args)
    assert fresh.returncode == 128 + signal.SIGTERM, fresh.stderr[-2000:]
    assert fresh.stderr.strip().splitlines()[-2] == (
        "interrupted (SIGTERM before training began: nothing trained, nothing saved). Resume with the same command:"
    )
    assert checkpoint_steps(tmp_path) == [] and metrics.read_history(tmp_path) == []
    saved = interrupt(tiny_data, tmp_path, signal.SIGTERM, 4)
    steps, history = sorted(checkpoint_steps(tmp_path)), metrics.read_history(tmp_path)
    resumed = run_interrupted("INT", 0, "compile", *args)
    assert resumed.returncode == 128 + signal.SIGINT, resumed.stderr[-2000:]
    assert resumed.stderr.strip().splitlines()[-2] == (
        f"interrupted (SIGINT before training resumed: nothing new to save, the checkpoint at step {saved} stays). "
        "Resume with the same command:"
    )
    assert sorted(checkpoint_steps(tmp_path)) == steps and metrics.read_history(tmp_path) == history
    assert f"Resumed from checkpoint at step {saved} " in finish(tiny_data, tmp_path, caplog)
    assert_same_run(tmp_path, reference)


def test_a_signal_while_the_data_loads_stops_before_compiling_even_a_finished_run(two_epoch_run, monkeypatch):
    """SIGINT while the data loads: a fresh run stops before its compile phase, nothing saved; a finished run (as a
    comparison's member) stops too, its results untouched, instead of reporting them and letting the next train."""
    config, finished = two_epoch_run
    load_data, handler = loop.load_data, signal.getsignal(signal.SIGINT)

    def signal_then_load(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return load_data(*args, **kwargs)

    monkeypatch.setattr(loop, "load_data", signal_then_load)
    monkeypatch.setattr(train_step.Programs, "compile_ahead", lambda *a, **k: pytest.fail("compiled after the signal"))
    fresh = finished.parent / "fresh"
    with pytest.raises(Interrupted) as stopped:
        run.run(config, fresh)
    assert (stopped.value.signum, stopped.value.step, stopped.value.saved) == (signal.SIGINT, 0, False)
    assert checkpoint_steps(fresh) == [] and metrics.read_history(fresh) == []
    results = (finished / metrics.RESULTS_FILE).read_bytes()
    with pytest.raises(Interrupted) as stopped:
        run.run(config, finished)
    assert (stopped.value.step, stopped.value.saved) == (8, False)
    assert (finished / metrics.RESULTS_FILE).read_bytes() == results
    assert signal.getsignal(signal.SIGINT) is handler  # the guard's is gone


def test_truncated_latest_checkpoint_falls_back_with_a_warning(two_epoch_run, caplog):
    config, workdir = two_epoch_run
    expected = metrics.load_results(workdir)["params_sha256"]
    (workdir / "results.json").unlink()
    helpers.damage_checkpoint(workdir, 8)
    run.run(config, workdir)
    assert "Checkpoint" in caplog.text and "8 is damaged" in caplog.text
    (line,) = [r for r in caplog.records if "does not restore" in r.getMessage()]
    assert "\n" not in line.getMessage() and getattr(line, "see_log_file", False) and line.exc_info is None
    assert line.getMessage().endswith("; trying the one before.")  # 8 is the newest of three
    (details,) = [r for r in caplog.records if getattr(r, "log_file_only", False) and "Traceback" in r.getMessage()]
    assert details.exc_info is None  # text: no frames kept alive by the log
    assert (workdir / "checkpoints_damaged" / "8").is_dir()
    assert metrics.load_results(workdir)["params_sha256"] == expected


def test_a_read_only_store_skips_a_damaged_checkpoint_and_moves_nothing(two_epoch_run, monkeypatch):
    """`evaluate` or `predict` on a run it cannot write (an archive on a read-only mount): a damaged newest checkpoint
    is passed over for the one before, and left where it is (moving it aside would fail there)."""
    config, workdir = two_epoch_run
    helpers.damage_checkpoint(workdir, 8)
    helpers.read_only_below(monkeypatch, workdir)
    store = checkpoints.CheckpointStore.for_run(workdir, config.checkpoint, async_save=False, read_only=True)
    try:
        _, state, _ = train_state.create_train_state(config)
        _, meta = store.restore_latest(state)
    finally:
        store.close()
    assert meta["step"] == 6 and sorted(checkpoint_steps(workdir)) == [4, 6, 8]
    assert not (workdir / "checkpoints_damaged").exists()


def test_the_last_step_is_saved_where_the_checkpoint_interval_does_not_divide_the_run(cnn_config, tmp_path):
    """Every 3 steps of an 8-step run: 3, 6 and 8, the run's end (without it a rerun would train again from 6, and
    `evaluate` would score an older state than the run's)."""
    cnn_config.checkpoint.every_steps, cnn_config.checkpoint.max_to_keep = 3, 5
    run.run(cnn_config, tmp_path)
    assert sorted(checkpoint_steps(tmp_path)) == [3, 6, 8]


def test_checkpoints_and_results_name_the_machines_and_a_resume_elsewhere_warns(two_epoch_run, monkeypatch, caplog):
    """results.json and every checkpoint record the machine the run computed on and the machines its steps trained on;
    a resume on the same one says nothing more, one on another (here another CPU kind) warns that the bits will
    differ and adds the new one from its step; scoring again elsewhere names the scorer and keeps that lineage."""
    config, workdir = two_epoch_run
    here = parallel.run_machine(parallel.make_mesh())
    assert here == f"cpu: {machine.cpu_kind()}; {jax.device_count()} device(s) in 1 process(es); jax {jax.__version__}"
    assert metrics.load_results(workdir)["machine"] == here
    store = checkpoints.CheckpointStore.for_run(workdir, config.checkpoint)
    assert store.newest_meta()["machine"] == here
    store.close()
    expected = metrics.load_results(workdir)["params_sha256"]

    def resume_from_step_6() -> str:
        shutil.rmtree(workdir / "checkpoints" / "8")
        (workdir / "results.json").unlink()
        caplog.clear()
        run.run(config, workdir)
        assert "Resumed from checkpoint at step 6 " in caplog.text
        return caplog.text

    caplog.set_level(logging.INFO)
    assert "was written on" not in resume_from_step_6()
    assert metrics.load_results(workdir)["params_sha256"] == expected
    assert metrics.load_results(workdir)["trained_on"] == [{"machine": here, "from_step": 0}]
    elsewhere = here.replace(machine.cpu_kind(), "Another CPU / AVX2 / 4 threads")
    monkeypatch.setattr(machine, "cpu_kind", lambda xla_flags=None: "Another CPU / AVX2 / 4 threads")
    assert f"Checkpoint 6 was written on {here} and training goes on on {elsewhere}: " in resume_from_step_6()
    moved = [{"machine": here, "from_step": 0}, {"machine": elsewhere, "from_step": 6}]
    results = metrics.load_results(workdir)
    assert results["machine"] == elsewhere and results["trained_on"] == moved
    store = checkpoints.CheckpointStore.for_run(workdir, config.checkpoint)
    assert store.newest_meta()["trained_on"] == moved  # a later resume keeps the whole lineage
    store.close()
    monkeypatch.undo()  # scored again on the first machine: the scores name it, the lineage stays the training's
    results = evaluate.evaluate_checkpoint(config, workdir)
    assert results["machine"] == here and results["trained_on"] == moved == metrics.load_results(workdir)["trained_on"]


def test_a_start_killed_before_its_first_checkpoint_committed_kept_nothing(tiny_data, tmp_path, caplog):
    """Its first epoch's history line written, its first save cut short (a temporary step folder): a rerun starts
    from step 0 and drops that line, so nothing is kept and the next start may change any field, as after a stop
    before training; once a step is committed, its fields are the run's."""
    config = helpers.tiny_config(tiny_data)
    config_lib.save_or_check(config, tmp_path)
    metrics.append_history(tmp_path, {"epoch": 1, "step": 4, "train_loss": 1.0})
    (tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp").mkdir(parents=True)
    assert config_lib.kept_nothing(tmp_path)
    caplog.set_level(logging.INFO)
    config_lib.save_or_check(helpers.tiny_config(tiny_data, seed=1), tmp_path)  # replaced, not refused
    assert "was left by a start that kept nothing; replacing it" in caplog.text
    (tmp_path / "checkpoints" / "4").mkdir()
    assert not config_lib.kept_nothing(tmp_path)
    with pytest.raises(ConfigError, match=r"holds a run with a different config \(seed: 1 -> 0\)"):
        config_lib.save_or_check(config, tmp_path)


def test_a_config_json_written_before_a_field_existed_resumes_as_it_was_and_refuses_another_value(tiny_data, tmp_path):
    """A run started by an earlier version has no `tta_shift` in its config.json (nor its comparison's members): it
    reads as 0, what that version computed, so the run resumes and is scored as it was; another value is a change."""
    config = helpers.tiny_config(tiny_data)
    config_lib.save_or_check(config, tmp_path)
    saved = json.loads((tmp_path / config_lib.CONFIG_FILE).read_text())
    del saved["tta_shift"]
    (tmp_path / config_lib.CONFIG_FILE).write_text(json.dumps(saved))
    (tmp_path / "checkpoints" / "4").mkdir(parents=True)  # a step committed: the run's fields are fixed
    assert config_lib.save_or_check(config, tmp_path) is None  # the same run: nothing refused or rewritten
    assert "tta_shift" not in json.loads((tmp_path / config_lib.CONFIG_FILE).read_text())
    config.tta_shift = 1
    with pytest.raises(ConfigError, match=r"holds a run with a different config \(tta_shift: 0 -> 1\)"):
        config_lib.save_or_check(config, tmp_path)
    compare = {"kind": "compare", "members": {"cnn": {**saved}, "random_forest": {"kind": "baseline"}}}
    (tmp_path / "compare.json").write_text(json.dumps(compare))
    members = config_lib.read_saved(tmp_path / "compare.json")["members"]
    assert members["cnn"]["tta_shift"] == 0 and "tta_shift" not in members["random_forest"]


def test_a_comparison_compares_the_fields_of_members_on_in_both_its_config_and_the_saved_one(tmp_path):
    """A member off on either side computed, or computes, nothing in the comparison: a changed default in its config
    file (as configs/speedrun.py's epochs once changed) or its joining does not refuse a rerun; an enabled member's
    changed field does, named."""
    from benchmarks import common

    saved = common.load_config("compare", [])
    assert saved.members.speedrun.enabled is False
    config_lib.save_or_check(saved, tmp_path)
    (tmp_path / "cnn").mkdir()  # a member's run kept: the comparison's fields are fixed
    changed = common.load_config("compare", ["--config.members.speedrun.num_epochs=5"])
    config_lib.save_or_check(changed, tmp_path)  # not refused: config.json now records the member as it is
    assert config_lib.read_saved(tmp_path / config_lib.CONFIG_FILE)["members"]["speedrun"]["num_epochs"] == 5
    joined = common.load_config(
        "compare", ["--config.members.speedrun.enabled=True", "--config.members.speedrun.seed=3"]
    )
    assert config_lib.diff(config_lib.to_dict(saved), config_lib.to_dict(joined)) == {}
    other = common.load_config("compare", ["--config.members.cnn.num_epochs=5"])
    with pytest.raises(ConfigError, match=r"different config \(members\.cnn\.num_epochs: 30 -> 5\)"):
        config_lib.save_or_check(other, tmp_path)


def test_a_run_resumed_on_other_data_is_refused_and_keeps_its_checkpoints(tiny_data, tmp_path, caplog):
    """Each checkpoint records the checksums of the data it trained on: a rerun that reads other files (another
    data.dir, a changed FMNIST_DATA_DIR) is refused with one line naming them, its checkpoints, history, events and
    config.json untouched (its data.dir and num_epochs, even where the refused command raised them with
    resume_with_changes), where it would have trained on and recorded the new files' checksums as the run's; with
    the files it trained on it goes on. `evaluate` on other files scores apart from the run's results. Once the run
    has finished, its command on other files is refused as well."""
    config = helpers.tiny_config(tiny_data)
    run.run(config, tmp_path)
    shutil.rmtree(tmp_path / "checkpoints" / "8")  # as if stopped after epoch 1
    (tmp_path / "results.json").unlink()
    other = helpers.write_idx_dataset(tmp_path.parent / f"{tmp_path.name}_other", n_train=320, n_test=100, seed=1)

    def kept():  # all but the lock file, which names its last holder
        return {k: v for k, v in helpers.snapshot(tmp_path).items() if k != files.LOCK_FILE}

    before = kept()
    pattern = (
        rf"checkpoint 4 in {tmp_path}/checkpoints was trained on other data than idx:{other} holds: "
        r"t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, train-images-idx3-ubyte, train-labels-idx1-ubyte differ, by "
        r"content's SHA-256\. Point config.data.dir \(or FMNIST_DATA_DIR\) at the files it"
    )
    with pytest.raises(ConfigError, match=pattern):
        run.run(helpers.tiny_config(other), tmp_path)
    assert kept() == before
    with pytest.raises(ConfigError, match=pattern):
        run.run(helpers.tiny_config(other, num_epochs=3, resume_with_changes=True), tmp_path)
    assert kept() == before  # so the first command goes on as it was, num_epochs 2
    caplog.set_level(logging.INFO)
    run.run(config, tmp_path)
    assert "Resumed from checkpoint at step 4 " in caplog.text
    assert [r["step"] for r in metrics.read_history(tmp_path)] == [4, 8]
    own = (tmp_path / "results.json").read_bytes()
    run.run(helpers.tiny_config(other, mode="evaluate"), tmp_path)  # scored on the other files: apart from its own
    assert (tmp_path / "results.json").read_bytes() == own
    apart = metrics.load_results(tmp_path / "evaluate_step_8_other_data")
    assert (
        apart["checkpoint_step"] == 8
        and apart["dataset_checksums"] != metrics.load_results(tmp_path)["dataset_checksums"]
    )
    finished = kept()  # finished: its command on other files is refused too, not reported as if run on them
    with pytest.raises(ConfigError, match=pattern.replace("checkpoint 4", "checkpoint 8")):
        run.run(helpers.tiny_config(other), tmp_path)
    assert kept() == finished


def test_data_read_from_another_source_than_the_checkpoints_is_refused(caplog):
    """IDX files' checksums and TFDS's arrays' digest share no name: the same images perhaps, but TFDS gives them in
    another order, so the seed's split differs (a resume would validate on images it trained on): refused, as other
    files are; checkpoints older than the record compare nothing."""
    from fmnist_jax.training.plan import Plan

    plan = types.SimpleNamespace(dataset=types.SimpleNamespace(checksums={"tfds:fashion_mnist": "a"}, source="tfds"))
    meta = {"step": 6, "dataset_checksums": {"train-images-idx3-ubyte": "b"}}
    with pytest.raises(ConfigError) as refused:
        Plan.check_data(plan, meta, pathlib.Path("w"))
    assert str(refused.value).startswith(
        "checkpoint 6 in w was trained on the same images read otherwise: it read them as train-images-idx3-ubyte, not "
        "as tfds:fashion_mnist: another source gives the images in another order, so the seed's split differs"
    )
    Plan.check_data(plan, {"step": 6}, pathlib.Path("w"))
    Plan.check_data(plan, {"step": 6, "dataset_checksums": {"tfds:fashion_mnist": "a"}}, pathlib.Path("w"))
    assert caplog.text == ""


def test_the_lineage_of_checkpoints_older_than_its_record():
    """Checkpoints that predate `trained_on` give the machine that wrote them, from step 0; older still, the one
    given (a resume: this machine's), or none (a checkpoint scored again: results.json then names no lineage)."""
    moved = [{"machine": "a", "from_step": 0}, {"machine": "b", "from_step": 6}]
    assert checkpoints.trained_on({"step": 8, "machine": "b", "trained_on": moved}, "c") == moved
    assert checkpoints.trained_on({"step": 8, "machine": "b"}, "c") == [{"machine": "b", "from_step": 0}]
    assert checkpoints.trained_on({"step": 8}, "c") == [{"machine": "c", "from_step": 0}]
    assert checkpoints.trained_on({"step": 8}) == []


def test_a_finished_run_is_reported_without_building_its_model(two_epoch_run, monkeypatch, caplog):
    """A rerun of a finished run decides from its results.json and its newest checkpoint's metadata alone: no model,
    no programs, no arrays read. Where that metadata does not read, the restore decides, as for any resume: the
    checkpoint is set aside as damaged and its steps are trained again, to the same bits."""
    config, workdir = two_epoch_run
    first = metrics.load_results(workdir)

    def no_model(*args, **kwargs):
        raise AssertionError("a finished run built its model")

    monkeypatch.setattr(train_state, "create_train_state", no_model)
    caplog.set_level(logging.INFO)
    assert run.run(config, workdir) == first
    assert "Resumed from checkpoint" not in caplog.text
    assert f"Run already finished (8 steps): test accuracy {first['test_accuracy']:.4f} (validation " in caplog.text
    monkeypatch.undo()
    (workdir / "checkpoints" / "8" / "meta" / "metadata").unlink()
    assert run.run(config, workdir)["params_sha256"] == first["params_sha256"]
    assert "8 is damaged" in caplog.text and (workdir / "checkpoints_damaged" / "8").is_dir()
    assert "Resumed from checkpoint at step 6 " in caplog.text


@pytest.mark.parametrize(
    "error, transient",
    [
        (OSError(errno.EMFILE, "Too many open files"), True),
        (OSError(errno.EIO, "Input/output error"), True),
        (TimeoutError("Drive did not answer"), True),
        (ValueError("UNAVAILABLE: Error reading local file .../d/0a1b: Stale file handle"), True),
        (OSError(errno.ENOENT, "No such file or directory"), False),
        (ValueError("DATA_LOSS: Error reading local file .../manifest.ocdbt: Unexpected end of data"), False),
        (ValueError("User-provided restore item and on-disk value metadata tree structures do not match"), False),
    ],
)
def test_storage_errors_are_transient_and_signs_of_damage_are_not(error, transient):
    assert checkpoints.is_transient(error) is transient
    wrapped = RuntimeError("restore failed")  # Orbax and TensorStore wrap what they raise: the cause counts
    wrapped.__cause__ = error
    assert checkpoints.is_transient(wrapped) is transient


def _flaky_restore(monkeypatch, failures: int, error: Exception | None = None):
    """CheckpointStore.restore raising a transient error (too many open files), or `error`, on its first `failures`
    calls."""
    monkeypatch.setattr(checkpoints, "RETRY_SECONDS", 0.0)
    restore, calls = checkpoints.CheckpointStore.restore, []

    def flaky(store, step, target):
        calls.append(step)
        if len(calls) <= failures:
            raise error or OSError(errno.EMFILE, "Too many open files", str(store.directory / str(step)))
        return restore(store, step, target)

    monkeypatch.setattr(checkpoints.CheckpointStore, "restore", flaky)
    return calls


def test_a_transient_error_on_the_first_restore_attempt_is_retried_and_sets_nothing_aside(
    two_epoch_run, monkeypatch, caplog
):
    config, workdir = two_epoch_run
    expected = metrics.load_results(workdir)["params_sha256"]
    (workdir / "results.json").unlink()
    calls = _flaky_restore(monkeypatch, failures=1)
    assert run.run(config, workdir)["params_sha256"] == expected
    assert calls[:2] == [8, 8] and "retrying in 0.0 s" in caplog.text
    assert sorted(checkpoint_steps(workdir)) == [4, 6, 8] and not (workdir / "checkpoints_damaged").exists()


def test_a_restore_retries_after_one_then_two_seconds(tmp_path, monkeypatch):
    """A transient storage error is tried again after RETRY_SECONDS, then twice that, then given up on."""
    slept = []
    monkeypatch.setattr(checkpoints.time, "sleep", slept.append)
    store = checkpoints.CheckpointStore(tmp_path / "checkpoints", async_save=False)
    try:
        monkeypatch.setattr(store, "restore", lambda step, target: _raise(OSError(errno.EIO, "Input/output error")))
        with pytest.raises(checkpoints.CheckpointError):
            store._restore_retrying(4, None)
    finally:
        store.close()
    assert slept == [checkpoints.RETRY_SECONDS, 2 * checkpoints.RETRY_SECONDS]


def _raise(error: Exception):
    raise error


def test_a_device_out_of_memory_while_restoring_stops_at_once_and_keeps_the_checkpoint(two_epoch_run, monkeypatch):
    """Out of memory is worded RESOURCE_EXHAUSTED like a storage's rate limit, but retrying it cannot help and the
    checkpoint is not damaged: one attempt, one error saying so, every checkpoint kept."""
    config, workdir = two_epoch_run
    (workdir / "results.json").unlink()
    oom = RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.20GiB.")
    calls = _flaky_restore(monkeypatch, failures=1, error=oom)
    with pytest.raises(checkpoints.CheckpointError, match=r"checkpoints/8 could not be restored: the device ran out"):
        run.run(config, workdir)
    assert calls == [8] and sorted(checkpoint_steps(workdir)) == [4, 6, 8]
    assert not (workdir / "checkpoints_damaged").exists()


def test_a_transient_error_that_persists_stops_the_run_keeps_the_checkpoint_and_the_rerun_resumes(
    two_epoch_run, monkeypatch
):
    config, workdir = two_epoch_run
    expected = metrics.load_results(workdir)["params_sha256"]
    (workdir / "results.json").unlink()
    calls = _flaky_restore(monkeypatch, failures=checkpoints.RESTORE_ATTEMPTS)
    message = (
        r"checkpoint .*checkpoints/8 could not be read \(OSError: .*Too many open files.*\), 3 attempts; it is kept"
    )
    with pytest.raises(checkpoints.CheckpointError, match=message):
        run.run(config, workdir)
    assert calls == [8] * checkpoints.RESTORE_ATTEMPTS  # never fell back to an older one
    assert sorted(checkpoint_steps(workdir)) == [4, 6, 8] and not (workdir / "checkpoints_damaged").exists()
    assert not (workdir / "results.json").exists()
    monkeypatch.undo()
    assert run.run(config, workdir)["params_sha256"] == expected  # resumed from step 8: nothing to train


def test_leftover_temporary_folder_is_ignored(two_epoch_run):
    config, workdir = two_epoch_run
    expected = metrics.load_results(workdir)["params_sha256"]
    (workdir / "results.json").unlink()
    os.rename(workdir / "checkpoints" / "8", workdir / "checkpoints" / "8.orbax-checkpoint-tmp")
    store = checkpoints.CheckpointStore(workdir / "checkpoints")
    assert store.all_steps() == [4, 6]
    store.close()  # once closed, its removal of the leftover is done: the run's store does not race it
    assert not (workdir / "checkpoints" / "8.orbax-checkpoint-tmp").exists()
    run.run(config, workdir)
    assert metrics.load_results(workdir)["params_sha256"] == expected


def test_no_valid_checkpoint_is_a_clear_error(two_epoch_run):
    config, workdir = two_epoch_run
    (workdir / "results.json").unlink()
    for step in (4, 6, 8):
        for f in (workdir / "checkpoints" / str(step)).rglob("*"):
            if f.is_file() and f.stat().st_size > 100:
                f.write_bytes(b"")
    with pytest.raises(
        checkpoints.CheckpointError, match=r"no valid checkpoint in .*delete the folder to start again"
    ) as e:
        run.run(config, workdir)
    assert "<bound method" not in str(e.value) and "TensorStore details" not in str(e.value)  # its own objects
    assert e.value.__cause__ is not None  # whole in the log file, which main.py's error line then names
    assert sorted(checkpoint_steps(workdir)) == [4, 6, 8]  # none restores: none is taken for damaged and moved
    with pytest.raises(checkpoints.CheckpointError, match=r"no valid checkpoint"):
        run.run(config, workdir)  # nor does a rerun start from scratch over them


def test_a_config_of_another_model_is_refused_and_moves_no_checkpoint(two_epoch_run):
    config, workdir = two_epoch_run
    steps = checkpoint_steps(workdir)
    other = copy.deepcopy(config)
    other.ema_decay = 0.99  # the state gains a moving average: another tree
    for mode in ("evaluate", "predict"):
        other.mode = mode
        with pytest.raises(ConfigError, match=r"trained with another model( or data)? \(ema_decay: trained with 0\.0"):
            run.run(other, workdir)
    # Below the config check, a checkpoint that does not fit the target is not taken for a damaged one while none
    # fits: nothing is moved aside.
    _, state, _ = train_state.create_train_state(other)
    store = checkpoints.CheckpointStore(workdir / "checkpoints", async_save=False)
    try:
        with pytest.raises(checkpoints.CheckpointError, match=r"builds a different model than the one in .*json"):
            store.restore_latest(state)
    finally:
        store.close()
    assert sorted(checkpoint_steps(workdir)) == sorted(steps) and not (workdir / "checkpoints_damaged").exists()
    config.mode = "evaluate"
    assert run.run(config, workdir)["test_accuracy"] == metrics.load_results(workdir)["test_accuracy"]


def test_a_start_that_computed_nothing_leaves_no_config_in_the_way(cnn_config, tmp_path):
    """In a folder that was there (one the run made is removed: the next test), a start refused after config.json is
    written leaves it, and the corrected command replaces it."""
    cnn_config.batch_size = 512  # more than the 256 training images: refused after config.json is written
    (tmp_path / "w").mkdir()
    with pytest.raises(ConfigError, match=r"batch_size=512 exceeds the 256 training images"):
        run.run(cnn_config, tmp_path / "w")
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [".lock", "config.json"]
    cnn_config.batch_size = 64
    assert run.run(cnn_config, tmp_path / "w")["test_accuracy"] > 0
    cnn_config.num_epochs = 3  # now the workdir holds a run: a changed config is refused as before
    with pytest.raises(ConfigError, match=r"holds a run with a different config \(num_epochs: 2 -> 3\)"):
        run.run(cnn_config, tmp_path / "w")


def test_a_refused_start_leaves_no_folder_it_made(cnn_config, tmp_path):
    """A command refused after its workdir was made (a setting checked with the model, the data read after
    config.json is written, a comparison without members) removes that folder and the parents it made, as far as
    they are empty (one that was there keeps its config.json: the test before)."""
    from benchmarks import common

    bad_model, bad_data = cnn_config.copy_and_resolve_references(), cnn_config.copy_and_resolve_references()
    bad_model.model.name = "resnet"
    bad_data.data.dir = str(tmp_path / "no_data")
    compare = common.load_config("compare")
    for member in compare.members.values():
        member.enabled = False
    for config, refused in [
        (bad_model, r"config.model.name='resnet'"),
        (bad_data, r"no_data \(named by config.data.dir\) does not exist"),
        (compare, r"config.members: none is enabled \(cnn, .*\); enable one, e.g. --config.members.cnn.enabled=True"),
    ]:
        with pytest.raises(UserError, match=refused):
            run.run(config, tmp_path / "new")
        assert not (tmp_path / "new").exists()
    (tmp_path / "runs" / "kept").mkdir(parents=True)  # runs/ was there: the start makes a/b/new in it, then removes it
    for new in (tmp_path / "runs" / "a" / "b" / "new", tmp_path / "runs" / "c" / ".." / "d"):  # c: never made
        with pytest.raises(UserError, match=r"config\.model\.name='resnet'"):
            run.run(bad_model, new)
        assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["kept"]


def test_a_parent_another_start_removes_meanwhile_is_made_again(tmp_path, monkeypatch):
    """Two starts under one new folder: when the one refused removes that folder while the other is making its own
    workdir in it (a FileNotFoundError from mkdir), the other makes it again and takes its lock."""
    real_mkdir, failed = pathlib.Path.mkdir, []

    def removed_once(path, *args, **kwargs):
        if not failed:
            failed.append(path)
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", removed_once)
    with files.workdir_lock(tmp_path / "runs" / "new"):
        assert (tmp_path / "runs" / "new" / files.LOCK_FILE).exists() and failed == [tmp_path / "runs" / "new"]


def test_a_run_refused_the_lock_leaves_the_folder_to_the_run_that_holds_it(cnn_config, tmp_path, monkeypatch):
    """Two starts on a new workdir: the one that found no folder but lost the lock to the other (which made it and
    wrote config.json) leaves that folder alone."""
    workdir, real_lock = tmp_path / "new", files.workdir_lock

    @contextlib.contextmanager
    def the_other_run_first(path):
        with real_lock(path):  # the other run: it made the folder, holds the lock, has written its config.json
            (path / "config.json").write_text("{}")
            with real_lock(path):
                yield

    monkeypatch.setattr(files, "workdir_lock", the_other_run_first)
    with pytest.raises(files.WorkdirBusy):
        run.run(cnn_config, workdir)
    assert sorted(p.name for p in workdir.iterdir()) == [".lock", "config.json"]


def test_a_start_that_failed_while_compiling_lets_the_next_change_any_field(cnn_config, tmp_path, monkeypatch):
    """Out of memory while compiling (or a stop then) leaves a checkpoint folder with no step and TensorBoard's
    file: nothing a rerun would go on from, so the corrected command (a smaller batch) runs in the same workdir."""

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 81.2GiB")

    monkeypatch.setattr(loop, "_compile", out_of_memory)
    with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):
        run.run(cnn_config, tmp_path)
    assert {"checkpoints", "tensorboard", "config.json"} <= {p.name for p in tmp_path.iterdir()}
    monkeypatch.undo()
    cnn_config.batch_size = 32
    assert run.run(cnn_config, tmp_path)["test_accuracy"] > 0
    assert [r["step"] for r in metrics.read_history(tmp_path)] == [8, 16]  # 256 images in batches of 32
    cnn_config.batch_size = 64  # now it holds a run
    with pytest.raises(ConfigError, match=r"holds a run with a different config \(batch_size: 32 -> 64\)"):
        run.run(cnn_config, tmp_path)


def test_an_error_after_a_start_accepted_its_changes_keeps_its_config(two_epoch_run, monkeypatch):
    """A finished run given a third epoch loses its scores once its start is accepted; a failure after that (out of
    memory while compiling) leaves config.json saying 3 epochs: put back to 2, it would name a finished run that has
    no scores."""
    config, workdir = two_epoch_run
    config.num_epochs, config.resume_with_changes = 3, True
    monkeypatch.setattr(loop, "_compile", lambda *args, **kwargs: _raise(RuntimeError("RESOURCE_EXHAUSTED")))
    with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):
        run.run(config, workdir)
    assert json.loads((workdir / "config.json").read_text())["num_epochs"] == 3
    assert not (workdir / "results.json").exists()


def test_resume_with_changes_may_keep_more_checkpoints_and_end_at_the_newest(two_epoch_run):
    """`checkpoint.max_to_keep` may change on resume (it changes no bits); and a run may be shortened to end exactly
    at its newest checkpoint (3 epochs asked, stopped at step 8, rerun with 2): it is scored there."""
    config, workdir = two_epoch_run
    expected = metrics.load_results(workdir)["params_sha256"]
    config.num_epochs, config.resume_with_changes, config.checkpoint.max_to_keep = 3, True, 5
    run.run(config, workdir)
    assert sorted(checkpoint_steps(workdir)) == [4, 6, 8, 10, 12]  # 3 were kept before
    for step in (10, 12):
        shutil.rmtree(workdir / "checkpoints" / str(step))
    history = [r for r in metrics.read_history(workdir) if r["step"] <= 8]
    (workdir / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    (workdir / "results.json").unlink()  # a 3-epoch run stopped at step 8
    config.num_epochs = 2
    assert run.run(config, workdir)["params_sha256"] == expected


def test_a_resumed_run_restores_onto_shapes_and_initialises_no_model(two_epoch_run, monkeypatch):
    """Where a checkpoint restores, the state comes from it alone: no model is initialised for the restore to
    replace (that compiled the initialisation's programs, 1.7 s of the set-up of a new CPU process); where none does,
    the run initialises once. The resumed run ends with the uninterrupted run's bits."""
    from fmnist_jax import models

    built = []  # one entry per model initialised with values (tracing for shapes alone makes none)
    create_model = models.create_model

    def counted(*args, **kwargs):
        model = create_model(*args, **kwargs)
        built.extend(() if isinstance(jax.tree.leaves(model)[0], jax.core.Tracer) else [kwargs["seed"]])
        return model

    monkeypatch.setattr(models, "create_model", counted)
    config, workdir = two_epoch_run
    expected = metrics.load_results(workdir)["params_sha256"]
    shutil.rmtree(workdir / "checkpoints" / "8")
    shutil.rmtree(workdir / "checkpoints" / "6")
    (workdir / "results.json").unlink()  # stopped half way: checkpoint 4 is the newest
    assert run.run(config, workdir)["params_sha256"] == expected and built == []
    fresh = workdir.parent / "fresh"
    config.seed = 3
    run.run(config, fresh)
    assert built == [3]


def test_a_run_cannot_be_shortened_below_its_newest_checkpoint(two_epoch_run, tmp_path):
    """resume_with_changes may change num_epochs, but not end a run before the step it has trained to: the run
    would be scored and recorded as a shorter one. Its config.json stays as it was."""
    config, finished = two_epoch_run  # checkpoints at steps 4, 6, 8; 4 steps an epoch
    config.num_epochs, config.resume_with_changes = 1, True
    saved = (finished / "config.json").read_text()
    with pytest.raises(ConfigError, match=r"trained to step 8 \(epoch 2\) and config.num_epochs=1 ends at step 4; set"):
        run.run(config, finished)
    assert (finished / "config.json").read_text() == saved
    stopped = tmp_path / "stopped"  # stopped half way through epoch 2
    shutil.copytree(finished, stopped)
    shutil.rmtree(stopped / "checkpoints" / "8")
    (stopped / "results.json").unlink()
    with pytest.raises(ConfigError, match=r"step 6 \(epoch 1.5\) .* set it to 2 or more, or use a new --workdir"):
        run.run(config, stopped)
    (stopped / "history.jsonl").unlink()  # without it, the restore finds the checkpoint past the end
    with pytest.raises(ConfigError, match=r"checkpoint 6 in .* past the run's last step, 4 \(config.num_epochs=1\)"):
        run.run(config, stopped)
    assert (stopped / "config.json").read_text() == saved  # written for the restore, then put back


def test_evaluate_from_a_checkpoint(two_epoch_run):
    config, workdir = two_epoch_run
    final = metrics.load_results(workdir)
    config.mode = "evaluate"
    assert run.run(config, workdir)["test_accuracy"] == final["test_accuracy"]
    latest = metrics.load_results(workdir)  # rewritten by the evaluation of the latest checkpoint
    trained = {k: v for k, v in latest["seconds"].items() if k != "evaluate"}
    assert trained == final["seconds"]  # where the training's seconds went is kept, the scoring's beside it
    assert list(latest["seconds"]["evaluate"]["phases"]) == ["evaluation", "writing"]
    config.checkpoint.step = 4
    older = run.run(config, workdir)
    assert older["params_sha256"] != final["params_sha256"]
    assert metrics.load_results(workdir / "evaluate_step_4") == older  # its own folder, with its predictions
    assert older["checkpoint_step"] == 4 and "checkpoint_step" not in latest
    again = run.run(config, workdir)  # scored apart again: its own seconds, not the first scoring's inside them
    assert again["params_sha256"] == older["params_sha256"] and "evaluate" not in again["seconds"]
    models = report.runs.load_models([workdir, workdir / "evaluate_step_4"])  # never averaged with its run
    assert [(m.title, len(m.runs)) for m in models] == [("CNN (Flax)", 1), ("CNN (Flax) (checkpoint at step 4)", 1)]
    assert models[1].runs[0].settings == models[0].runs[0].settings is not None  # its run's config
    assert (workdir / "evaluate_step_4" / "predictions.npz").exists()
    assert metrics.load_results(workdir) == latest  # the run's results stay those of its last step
    config.mode, config.checkpoint.step = "train", None
    assert run.run(config, workdir) == latest  # a rerun reports the finished run as it was
    config.mode, config.checkpoint.step = "evaluate", 5
    with pytest.raises(checkpoints.CheckpointError, match=r"no checkpoint at step 5 .*available: \[4, 6, 8\]"):
        run.run(config, workdir)


def test_evaluating_an_unfinished_run_keeps_its_scores_apart_and_the_run_unfinished(two_epoch_run, tmp_path):
    """results.json marks a run finished: scoring the newest checkpoint of a run stopped half way writes
    evaluate_step_N/, and the rerun trains on to the uninterrupted run's bits."""
    config, straight = two_epoch_run
    stopped = tmp_path / "stopped"
    shutil.copytree(straight, stopped)
    shutil.rmtree(stopped / "checkpoints" / "8")
    for name in ("results.json", "predictions.npz"):
        (stopped / name).unlink()
    config.mode = "evaluate"
    scores = run.run(config, stopped)
    assert metrics.load_results(stopped / "evaluate_step_6") == scores
    assert not (stopped / "results.json").exists() and not (stopped / "predictions.npz").exists()
    config.mode = "train"
    run.run(config, stopped)
    assert_same_run(stopped, straight)


def test_a_finished_run_scored_with_other_settings_keeps_its_own_results(two_epoch_run):
    """Scoring the last checkpoint with a setting other than the run's (test-time flips) writes a folder of its own,
    naming the setting (`scored_with`), which the report keeps apart from the run; the run's own results stay, and
    so do those of the checkpoint scored apart with the run's settings (evaluate_step_8/)."""
    config, finished = two_epoch_run
    own = (finished / "results.json").read_bytes()
    config.mode, config.checkpoint.step = "evaluate", 8
    plain = run.run(config, finished)
    config.checkpoint.step, config.tta_flip = None, True
    scores = run.run(config, finished)
    apart = finished / "evaluate_step_8_tta_flip=True"
    assert metrics.load_results(apart) == scores and (finished / "results.json").read_bytes() == own
    assert metrics.load_results(finished / "evaluate_step_8") == plain and "scored_with" not in plain
    assert scores["scored_with"] == {"tta_flip": True} and scores["checkpoint_step"] == 8
    assert scores["params_sha256"] == json.loads(own)["params_sha256"]
    members = [report.runs.load_member(w) for w in (finished, apart)]
    assert members[1].settings == {**members[0].settings, "tta_flip": True}
    config.tta_flip = False  # the run's own setting again: its results are rewritten in place, to the same scores
    again = run.run(config, finished)
    assert again["test_accuracy"] == json.loads(own)["test_accuracy"] and "scored_with" not in again
    assert metrics.load_results(finished) == again


@pytest.fixture
def read_only_dir(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:  # root ignores permission bits: use a read-only file system instead
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], check=False).returncode:
            if os.environ.get("CI"):
                pytest.fail("CI runs as root and must be able to mount a read-only tmpfs")
            pytest.skip("cannot mount a read-only tmpfs here")
        yield folder
        subprocess.run(["umount", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


def test_read_only_workdir_is_a_clear_error(cnn_config, read_only_dir):
    with pytest.raises(
        files.WorkdirError, match=r"cannot use .*run as a workdir \((Read-only file system|Permission denied)\)"
    ):
        run.run(cnn_config, read_only_dir / "run")
    (read_only_dir.parent / "afile").write_text("")
    with pytest.raises(files.WorkdirError, match=r"cannot use .*afile as a workdir \(a file, not a folder\)"):
        run.run(cnn_config, read_only_dir.parent / "afile")
    with pytest.raises(checkpoints.CheckpointError, match=r"cannot write checkpoints to .*choose a writable"):
        checkpoints.CheckpointStore(read_only_dir / "checkpoints")


@pytest.mark.parametrize(
    "outcome, refused",
    [
        (OSError(5, "Input/output error"), r"saving checkpoint 4 to .*failed: .*Input/output"),
        (False, r"checkpoint 4 was not saved: .*checkpoints already counts steps \[\]; rerun the same command"),
    ],
    ids=["raised", "skipped"],  # Orbax skips a step it counts as saved, returning False
)
def test_failed_save_stops_training_with_a_clear_error(cnn_config, tmp_path, monkeypatch, outcome, refused):
    def broken_save(self, step, *args, **kwargs):
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(checkpoints.ocp.CheckpointManager, "save", broken_save)
    with pytest.raises(checkpoints.CheckpointError, match=refused):
        run.run(cnn_config, tmp_path)
    assert not (tmp_path / "results.json").exists() and not checkpoint_steps(tmp_path)


def test_a_full_disk_during_a_save_is_one_disk_full_error_naming_the_workdir(cnn_config, tmp_path, monkeypatch):
    def full_disk(self, step, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints.ocp.CheckpointManager, "save", full_disk)
    with pytest.raises(files.DiskFull) as caught:
        run.run(cnn_config, tmp_path)
    assert str(caught.value) == (
        f"the disk holding {tmp_path} is full (no space left while saving a checkpoint); free some space and "
        "rerun the same command: it resumes from the last complete checkpoint."
    )
    assert isinstance(caught.value.__cause__, checkpoints.CheckpointError)
    assert not (tmp_path / "results.json").exists()


def test_check_raises_a_failed_background_save_and_never_waits_for_one_under_way(tmp_path):
    """`CheckpointStore.check`, called at each epoch's end without a save: a save still being written is left to
    finish (no wait); one that failed in the background is raised at once, not when the next save starts."""
    store = checkpoints.CheckpointStore(tmp_path / "checkpoints")
    calls = []

    def failed_wait():
        calls.append("wait")
        raise OSError(errno.ENOSPC, "No space left on device")

    try:
        store.manager.wait_until_finished = failed_wait
        store.manager.is_saving_in_progress = lambda: True
        store.check()  # under way: neither waited for nor raised
        assert calls == []
        store.manager.is_saving_in_progress = lambda: False
        failed = f"a checkpoint save to {store.directory} failed: .Errno 28. No space left"
        with pytest.raises(CheckpointError, match=failed):
            store.check()
        assert calls == ["wait"]
        # Another process's save failed (its all-gather says so), this one's is still under way: all stop together.
        store.manager.is_saving_in_progress = lambda: True
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(checkpoints.parallel, "max_over_processes", lambda value: 1)
            with pytest.raises(CheckpointError, match="failed on another process of the job; its error says why"):
                store.check()
    finally:
        del store.manager.wait_until_finished, store.manager.is_saving_in_progress
        store.close()


def test_a_save_puts_the_loss_points_before_it_on_disk_and_waits_for_the_save_under_way(tmp_path, monkeypatch):
    """`loop._save`: TensorBoard's running-loss points up to the checkpoint's step are flushed first (a kill before the
    epoch's end would otherwise leave them missing after the resume); then a save still under way is waited for and
    its failure raised before the next one starts (on several processes, a failure met by one alone hangs the
    others in Orbax's commit)."""
    flushed = []
    writer = types.SimpleNamespace(flush=lambda up_to=None: flushed.append(up_to))
    plan = types.SimpleNamespace(
        steps_per_epoch=4,
        config=helpers.load_config("cnn"),
        machine="here",
        trained_on=[],
        dataset=types.SimpleNamespace(checksums={}),
        workdir=tmp_path,
    )
    store = checkpoints.CheckpointStore(tmp_path / "checkpoints", async_save=False)
    try:
        monkeypatch.setattr(store.manager, "is_saving_in_progress", lambda: True)
        monkeypatch.setattr(store.manager, "wait_until_finished", lambda: _raise(OSError(errno.ENOSPC, "full")))
        monkeypatch.setattr(store, "save", lambda *args: pytest.fail("saved while the save before it failed"))
        with pytest.raises(CheckpointError, match="failed"):
            loop._save(store, writer, plan, None, 6, 1.0)
    finally:
        monkeypatch.undo()
        store.close()
    assert flushed == [6]


def test_a_save_that_fails_in_the_background_stops_the_run_at_the_next_epochs_end(tiny_data, tmp_path, monkeypatch):
    """A checkpoint every 2 epochs of 4: the save at the end of epoch 2 fails once written out in the background (a
    full disk). The run stops at epoch 3's end with the full-disk error, not after training on to epoch 4's save."""
    config = helpers.tiny_config(tiny_data, num_epochs=4, **{"checkpoint.every_steps": 8})
    save = checkpoints.CheckpointStore.save

    def save_then_fail(self, step, state, meta):
        save(self, step, state, meta)
        self.manager.wait_until_finished()  # written out, so that the next epoch's end finds it finished

        failures = [OSError(errno.ENOSPC, "No space left on device")]  # raised once, as Orbax raises a save's

        def failed(wait=self.manager.wait_until_finished):
            wait()
            if failures:
                raise failures.pop()

        self.manager.wait_until_finished = failed

    monkeypatch.setattr(checkpoints.CheckpointStore, "save", save_then_fail)
    with pytest.raises(files.DiskFull, match="no space left while saving a checkpoint"):
        run.run(config, tmp_path)
    assert [r["epoch"] for r in metrics.read_history(tmp_path)] == [1, 2, 3]
    assert checkpoint_steps(tmp_path) == [8] and not (tmp_path / "results.json").exists()


def test_stores_opened_at_once_on_shared_storage_do_not_take_each_others_write_probe(tmp_path, monkeypatch):
    """Every process checks that it can write the folder; processes on different hosts may have the same PID (as
    containers give), so here a second store opens while the first one's probe is on disk, in one process."""
    write_bytes, opened = checkpoints.pathlib.Path.write_bytes, []

    def write_then_open_another(path, content):
        written = write_bytes(path, content)
        if path.name.startswith(".write-test") and not opened:
            opened.append(None)  # the second store's own probe opens no third
            opened[0] = checkpoints.CheckpointStore(tmp_path / "checkpoints", async_save=False)
        return written

    monkeypatch.setattr(checkpoints.pathlib.Path, "write_bytes", write_then_open_another)
    first = checkpoints.CheckpointStore(tmp_path / "checkpoints", async_save=False)
    for store in (first, *opened):
        store.close()
    assert len(opened) == 1 and not list((tmp_path / "checkpoints").glob(".write-test*"))


def test_a_step_set_aside_again_keeps_every_copy(tmp_path):
    """A damaged step folder is never deleted: a second and a third one of the same step go beside the first."""
    store = checkpoints.CheckpointStore(tmp_path / "checkpoints", async_save=False)
    try:
        for content in ("first", "second", "third"):
            (tmp_path / "checkpoints" / "5").mkdir()
            (tmp_path / "checkpoints" / "5" / "data").write_text(content)
            store._set_aside(5)
    finally:
        store.close()
    aside = tmp_path / "checkpoints_damaged"
    copies = {p.name: (p / "data").read_text() for p in aside.iterdir()}
    assert copies == {"5": "first", "5.1": "second", "5.2": "third"}


def test_a_hangup_is_caught_as_sigterm_is_its_second_ignored_unless_it_was_ignored():
    """SIGHUP (a closed terminal or SSH session) is noted as SIGTERM is; its second (a hung-up terminal sends two) is
    ignored until the guard ends, while a SIGTERM then acts as usual; where SIGHUP was ignored (nohup), it stays so."""
    heard = []
    before = {
        s: signal.signal(s, h)
        for s, h in ((signal.SIGHUP, signal.SIG_DFL), (signal.SIGTERM, lambda n, _: heard.append(n)))
    }
    try:
        with preemption.PreemptionGuard() as guard:
            os.kill(os.getpid(), signal.SIGHUP)
            os.kill(os.getpid(), signal.SIGHUP)  # its default would end this process
            assert guard.signal == signal.SIGHUP and signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)
            assert heard == [signal.SIGTERM] and guard.heard() == signal.SIGHUP  # the run stops for it
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        with preemption.PreemptionGuard() as guard:
            os.kill(os.getpid(), signal.SIGHUP)
            assert guard.signal is None and signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_a_signal_the_run_never_heard_acts_as_usual_when_the_guard_ends_unless_an_error_is_on_its_way():
    """A signal caught after the loop last asked (`heard`) is raised again when the guard ends, under the handlers
    it puts back, as one a moment later would be (a Ctrl-C: KeyboardInterrupt), once; one the run heard is not; nor
    one caught while an error leaves the guard: the error goes on, unhidden."""
    heard = []
    before = {
        s: signal.signal(s, h)
        for s, h in ((signal.SIGTERM, lambda n, _: heard.append(n)), (signal.SIGINT, signal.default_int_handler))
    }
    try:
        with preemption.PreemptionGuard() as guard:
            assert guard.heard() is None
            os.kill(os.getpid(), signal.SIGTERM)
            assert heard == []  # only noted
            guard.release()
            assert heard == [signal.SIGTERM]
        assert heard == [signal.SIGTERM]  # not twice
        with pytest.raises(KeyboardInterrupt), preemption.PreemptionGuard():
            os.kill(os.getpid(), signal.SIGINT)

        def fail_after_a_signal():
            with preemption.PreemptionGuard():
                os.kill(os.getpid(), signal.SIGTERM)
                raise ValueError("the error")

        with pytest.raises(ValueError, match="the error"):
            fail_after_a_signal()
        assert heard == [signal.SIGTERM] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_at_once_takes_only_default_signals_and_puts_back_all_it_changed():
    """`preemption.at_once` (a baseline's stop): SIGTERM, SIGHUP and SIGINT at their defaults get its handler and a
    wake-up fd, all put back after, its thread ended; a signal ignored or handled before it stays so, and another's
    wake-up fd (an event loop's) leaves everything as it was. (Its effect, in a process: test_baselines.py.)"""
    import threading

    names = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    defaults = dict(zip(names, (signal.SIG_DFL, signal.SIG_DFL, signal.default_int_handler), strict=True))

    def at_once_state():
        fd = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(fd)
        return {s: signal.getsignal(s) for s in names}, fd

    def handled(signum, frame):
        pass

    before = {s: signal.signal(s, h) for s, h in defaults.items()}
    read, write = os.pipe()
    os.set_blocking(write, False)
    try:
        with preemption.at_once("a test"):
            inside, fd = at_once_state()
            assert fd != -1 and all(h not in defaults.values() for h in inside.values())
            assert any(t.name == "at_once" for t in threading.enumerate())
        assert at_once_state() == (defaults, -1)
        assert not any(t.name == "at_once" for t in threading.enumerate())
        left = {signal.SIGTERM: handled, signal.SIGHUP: signal.SIG_IGN, signal.SIGINT: signal.SIG_IGN}
        for s, h in left.items():
            signal.signal(s, h)
        with preemption.at_once("a test"):
            assert at_once_state() == (left, -1)
        for s, h in defaults.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(write)
        with preemption.at_once("a test"):
            assert at_once_state() == (defaults, write)
        assert signal.set_wakeup_fd(-1) == write
    finally:
        signal.set_wakeup_fd(-1)
        os.close(read)
        os.close(write)
        for s, handler in before.items():
            signal.signal(s, handler)


AT_ONCE_SCRIPT = """
import os, signal, sys, time
from fmnist_jax import preemption
{before}
with preemption.at_once("in a test"):
    {body}
"""


def _at_once_process(body: str, before: str = "", **kwargs) -> subprocess.Popen:
    script = AT_ONCE_SCRIPT.format(before=before, body=body)
    return subprocess.Popen([sys.executable, "-c", script], env=helpers.subprocess_env(), text=True, **kwargs)


def test_at_once_lets_a_forked_child_go_without_it_and_ctrl_c_in_python_code_raise():
    """A child forked inside `at_once` has neither its handlers nor its wake-up fd (a signal to the child would
    otherwise end the parent); where Python code runs, Ctrl-C is KeyboardInterrupt as usual (`finally` blocks clean
    up), and the handlers are put back after it."""
    child = (
        "pid = os.fork()\n"
        "    if pid == 0:\n"
        "        fd = signal.set_wakeup_fd(-1)\n"
        "        os._exit(0 if fd == -1 and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL else 1)\n"
        "    print(os.waitpid(pid, 0)[1], flush=True)"
    )
    proc = _at_once_process(child, stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.strip() == "0"
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), preemption.at_once("a test"):
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_ctrl_c_during_at_onces_tear_down_is_raised_once_all_is_put_back(monkeypatch):
    """A second Ctrl-C while the first one's KeyboardInterrupt leaves `at_once` (here sent as its tear-down begins)
    comes after the tear-down: handlers, wake-up fd and thread are gone, none left to act on a later signal."""
    import threading

    class Interrupting(dict):
        def clear(self):
            super().clear()
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(preemption, "_AT_ONCE", Interrupting())
    before = {
        s: signal.signal(s, h)
        for s, h in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL))
    }
    try:
        with pytest.raises(KeyboardInterrupt), preemption.at_once("a test"):
            pass
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL and signal.set_wakeup_fd(-1) == -1
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert not any(t.name == "at_once" for t in threading.enumerate())
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_at_once_leaves_a_ctrl_c_the_code_took_up_to_it_and_still_ends_a_later_one_that_a_fit_holds(tmp_path):
    """A KeyboardInterrupt the code caught does not end the process a grace period later (it runs on, here through
    twice that grace); a later Ctrl-C while liblinear holds the main thread still ends it (exit 130, with the line)."""
    script = (
        "try:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "    except KeyboardInterrupt:\n"
        "        pass\n"
        "    time.sleep(2 * preemption.CTRL_C_GRACE_SECONDS)\n"
        "    print('alive', flush=True)\n"
        "    import numpy as np\n"
        "    from sklearn.svm import LinearSVC\n"
        "    x, y = np.random.default_rng(0).normal(size=(200, 50)), np.arange(200) % 10\n"
        "    LinearSVC(dual=True, tol=1e-30, max_iter=10**9, C=1000.0, verbose=1).fit(x, y)  # never ends"
    )
    out = tmp_path / "stdout"
    with open(out, "w") as stdout:
        proc = _at_once_process(script, stdout=stdout, stderr=subprocess.PIPE)
        try:
            helpers.wait_for(lambda: "alive\n" in (text := out.read_text()) and "." in text, proc, timeout=60)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGINT and "interrupted (SIGINT, in a test)" in err


def test_at_once_ends_the_process_even_where_its_line_cannot_be_written():
    """A stderr nobody reads (a paused terminal, a stalled pipe), full: the line waits at most LINE_SECONDS, then the
    process ends as the signal asked (before, a blocked write kept it alive through every later signal)."""
    fill = (  # stderr's pipe filled without blocking, then blocking again: a write now waits for a reader
        "os.set_blocking(2, False)\ntry:\n    while True: os.write(2, b'x' * 65536)\n"
        "except BlockingIOError:\n    pass\nos.set_blocking(2, True)"
    )
    proc = _at_once_process(
        "print('ready', flush=True)\n    time.sleep(60)", before=fill, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.communicate()


def test_a_signal_ignored_before_the_guard_stays_ignored():
    """A job a script started with `&` ignores SIGINT (the script's Ctrl-C is not its own), under nohup SIGHUP:
    the guard leaves an ignored signal ignored rather than stop the run for it."""
    before = {s: signal.signal(s, signal.SIG_IGN) for s in preemption.PreemptionGuard.SIGNALS}
    try:
        with preemption.PreemptionGuard() as guard:
            for s in preemption.PreemptionGuard.SIGNALS:
                assert signal.getsignal(s) == signal.SIG_IGN
                os.kill(os.getpid(), s)
            assert guard.signal is None and guard.heard() is None
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_a_failed_save_found_while_an_error_stops_the_run_is_logged_beside_it_not_in_its_place(tmp_path, caplog):
    """Closing the store waits for the last save: where it failed (a full disk) while another error is already
    stopping the run (a NaN loss, a second Ctrl-C), that error stays the one raised; alone, the save's is raised."""
    for error in (ValueError("the run's own error"), None):
        store = checkpoints.CheckpointStore(tmp_path / f"c{error is None}", async_save=False)
        failures = [OSError(errno.ENOSPC, "No space left on device")]  # raised once, as Orbax raises a save's

        def failed_save(wait=store.manager.wait_until_finished, failures=failures):
            wait()
            if failures:
                raise failures.pop()

        store.manager.wait_until_finished = failed_save
        with contextlib.ExitStack() as stack:
            stack.push(store.close_over)
            if error is None:
                with pytest.raises(CheckpointError, match="No space left"):
                    stack.close()
            else:
                with pytest.raises(ValueError, match="the run's own error"), stack:
                    raise error
    assert "No space left on device (while stopping for ValueError)" in caplog.text


def test_a_save_cut_short_in_the_commit_file_form_is_no_checkpoint(tmp_path):
    """In the commit-file form (Drive), a step folder without Orbax's commit file is a save a kill cut short: not a
    checkpoint to resume from, nor a step that keeps the run from being replaced or shortened."""
    folder = tmp_path / "checkpoints"
    for step, committed in ((4, True), (6, False)):
        (folder / str(step)).mkdir(parents=True)
        if committed:
            (folder / str(step) / config_lib.COMMIT_FILE).write_text("")
    assert config_lib.checkpoint_steps(tmp_path) == [4, 6]  # the rename form: a step folder is complete
    (folder / config_lib.ATOMICITY_FILE).write_text("commit_file\n")
    assert config_lib.checkpoint_steps(tmp_path) == [4]


def test_a_second_signal_acts_as_the_handler_before_the_guard_would():
    """The first SIGTERM or SIGINT is only noted; the guard then puts the previous handler back, so a second one
    acts as usual (a second Ctrl-C raises KeyboardInterrupt); leaving the guard restores what was there."""
    heard = []
    before = {
        s: signal.signal(s, h)
        for s, h in ((signal.SIGTERM, lambda *_: heard.append("term")), (signal.SIGINT, signal.default_int_handler))
    }
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            heard.clear()
            with preemption.PreemptionGuard() as guard:
                os.kill(os.getpid(), signum)
                assert guard.signal == signum and heard == []
                if signum == signal.SIGTERM:
                    os.kill(os.getpid(), signum)
                    assert heard == ["term"]
                else:
                    with pytest.raises(KeyboardInterrupt):
                        os.kill(os.getpid(), signum)
                assert guard.heard() == signum  # the run stops for it: not raised again on leaving
            assert heard == (["term"] if signum == signal.SIGTERM else [])
        with preemption.PreemptionGuard():
            pass
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
