"""Where users run it: TensorBoard events (read back with TensorBoard's own reader), the Colab notebook executed
headlessly, checkpoints marked by a commit file (Drive, FUSE), and `python -m benchmarks accelerator_check` on one CPU
device (on 8, through its command line, in tests/test_parallel.py's 8-device process)."""

import contextlib
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import types

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    ROOT,
    assert_every_check_reported,
    by_check,
    checkpoint_steps,
    last_line,
    load_config,
    main_args,
    process_state,
    run_interrupted,
    subprocess_env,
    wait_for,
)
from packaging.specifiers import SpecifierSet

from benchmarks import accelerator_check
from fmnist_jax import checkpoints, events, files, metrics, run

# The tiny study config's shapes (tests/fingerprints.py), so that its compiled programs serve these runs too.
TINY = {"data.validation_size": 64, "eval_batch_size": 50, "steps_per_call": 2}


def cnn_args(data_dir: pathlib.Path, workdir: pathlib.Path, fields: dict) -> tuple[str, ...]:
    """main.py's arguments for the CNN config on `data_dir` with `fields` set."""
    return main_args("cnn", workdir, {"data.dir": data_dir, **fields})


# The tiny run (the session's finished_tiny_run: checkpoints every 2 steps) kept in commit-file form and writing the
# running loss to TensorBoard every 2 steps; it keeps 2 checkpoints (finished_tiny_run 3: the maths are the same).
COMMIT_FILE_RUN = {
    **TINY,
    "num_epochs": 2,
    "checkpoint.every_steps": 2,
    "checkpoint.max_to_keep": 2,
    "checkpoint.atomicity": "commit_file",
    "tensorboard.loss_every_steps": 2,
}


@contextlib.contextmanager
def logged():
    """The messages logged at INFO and above in this process while in it (its runs log as main.py's do)."""
    lines, root, handler = [], logging.getLogger(), logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def read_scalars(workdir: pathlib.Path, run: str = "") -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the run's event files (of its TensorBoard run `run`: "" the training's), read by
    TensorBoard's own reader."""
    from tensorboard.backend.event_processing import event_accumulator

    # Without the reader's own purging: the files themselves must hold each step once (TensorBoard's fast Rust
    # loader does not purge).
    acc = event_accumulator.EventAccumulator(str(workdir / events.EVENTS_DIR / run), purge_orphaned_data=False)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_events_match_history(workdir: pathlib.Path):
    scalars, history = read_scalars(workdir), metrics.read_history(workdir)
    assert [s for s, _ in scalars["validation/accuracy"]] == [r["step"] for r in history]
    for tag, key in (
        ("train/loss", "train_loss"),
        ("train/accuracy", "train_accuracy"),
        ("validation/loss", "validation_loss"),
        ("validation/accuracy", "validation_accuracy"),
        ("epoch/images_per_second", "images_per_second"),
        ("epoch/seconds", "seconds"),
        ("epoch/number", "epoch"),
    ):
        np.testing.assert_allclose([v for _, v in scalars[tag]], [r[key] for r in history], rtol=1e-6, err_msg=tag)
    assert [v for _, v in scalars["epoch/learning_rate"]] == pytest.approx([1e-3] * len(history))
    running = dict(scalars["train/loss_running"])
    assert sorted(running) == list(range(2, history[-1]["step"] + 1, 2))  # every 2 steps, each once
    for r in history:  # at an epoch's end the running mean is the epoch's train loss
        assert running[r["step"]] == pytest.approx(r["train_loss"], rel=1e-6)
    results = metrics.load_results(workdir)
    assert scalars["test/accuracy"] == [(history[-1]["step"], pytest.approx(results["test_accuracy"]))]


def test_events_flushed_up_to_a_step_leave_the_later_points_pending(tmp_path):
    """The loop logs an epoch while later steps may still be running: flushing up to the epoch's step writes the
    running-loss points up to it and keeps the later ones for the next flush, without waiting for their values."""
    writer = events.EventWriter(tmp_path, restored_step=0, loss_every_steps=2)
    for step in (2, 4, 6):
        writer.steps_done(step, step * 10, jnp.float32(step))
    writer.flush(up_to=4)
    assert read_scalars(tmp_path)["train/loss_running"] == [(2, pytest.approx(0.1)), (4, pytest.approx(0.1))]
    writer.close()
    assert [s for s, _ in read_scalars(tmp_path)["train/loss_running"]] == [2, 4, 6]
    every_three = events.EventWriter(tmp_path / "three", restored_step=0, loss_every_steps=3)
    for step in (2, 4, 6, 8):  # calls of 2 steps: a point at the first call past each multiple of 3
        every_three.steps_done(step, step * 10, jnp.float32(step))
    every_three.close()
    assert [s for s, _ in read_scalars(tmp_path / "three")["train/loss_running"]] == [4, 6]


def test_a_resumed_runs_purge_marker_keeps_the_restored_steps_events_for_tensorboards_reader(tmp_path):
    """TensorBoard's Python reader drops the earlier events from a START marker's step on: the resumed run's file
    begins with one at one past its restored step, whose events (its epoch's scalars) belong to the run. (Here the
    resume's own pruning has already removed the later events; the marker covers a file it could not rewrite.)"""
    from tensorboard.backend.event_processing import event_accumulator, event_file_loader

    died = events.EventWriter(tmp_path, restored_step=0, loss_every_steps=0)
    for step in (2, 4, 6):  # the run that died after step 6, its last checkpoint at step 4
        died.writer.scalar("train/loss", step / 10, step)
    died.close()
    (old,) = (tmp_path / events.EVENTS_DIR).glob("events.out.tfevents.*")
    earlier = old.rename(old.with_name("events.out.tfevents.0000000001.host.1"))  # an earlier process's file
    resumed = events.EventWriter(tmp_path, restored_step=4, loss_every_steps=0)
    resumed.writer.scalar("train/loss", 0.65, 6)
    resumed.close()
    (new,) = set((tmp_path / events.EVENTS_DIR).glob("events.out.tfevents.*")) - {earlier}
    records = list(event_file_loader.EventFileLoader(str(new)).Load())
    starts = [e.step for e in records if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    assert starts == [5] and records[1].HasField("session_log")  # first after the file's version record
    acc = event_accumulator.EventAccumulator(str(tmp_path / events.EVENTS_DIR))  # purging, as TensorBoard does
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [
        (2, pytest.approx(0.2)),
        (4, pytest.approx(0.4)),
        (6, pytest.approx(0.65)),
    ]


@pytest.fixture(scope="module")
def killed_mid_save(tiny_data, tmp_path_factory):
    """A tiny run in commit-file form that writes TensorBoard events too (the running loss every 2 steps), killed
    from inside right after the save of step 4 has started (tests/interrupt.py): epoch 1's history line and events
    are written, its checkpoint folder is unfinished, step 2's is complete. Then rerun here to the end. Returns the
    workdir, the checkpoint folders as the kill left them ({step: has its commit file}, every name), the history
    then, and what the rerun logged."""
    workdir = tmp_path_factory.mktemp("killed_mid_save") / "run"
    killed = run_interrupted("KILL", 4, "in_flight", *cnn_args(tiny_data, workdir, COMMIT_FILE_RUN))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    folder = workdir / "checkpoints"
    steps = {int(p.name): (p / "commit_success.txt").exists() for p in folder.glob("[0-9]*") if p.is_dir()}
    names = [p.name for p in folder.iterdir()]
    history = metrics.read_history(workdir)
    with logged() as lines:
        run.run(load_config("cnn", **{"data.dir": str(tiny_data), **COMMIT_FILE_RUN}), workdir)
    return types.SimpleNamespace(workdir=workdir, steps=steps, names=names, history=history, log="\n".join(lines))


def test_events_hold_each_epoch_once_equal_to_the_history_even_after_a_sigkill(killed_mid_save):
    # Killed after epoch 1's events (step 4) while the newest complete checkpoint is step 2: the rerun restores
    # step 2, so the events of steps 3-4 from the first run (epoch 1's among them) must not show.
    assert [r["step"] for r in killed_mid_save.history] == [4]
    assert "Resumed from checkpoint at step 2 " in killed_mid_save.log
    assert_events_match_history(killed_mid_save.workdir)
    hparams = killed_mid_save.workdir / events.EVENTS_DIR / events.HPARAMS_RUN
    assert any(hparams.iterdir())


def test_each_epochs_learning_rate_in_the_events_is_its_last_steps(cnn_config, tmp_path):
    """Under a warm-up and cosine schedule the rate changes every step: TensorBoard's `epoch/learning_rate` is the
    one each epoch's last step trained with (steps 3 and 7 of two 4-step epochs, counted from 0)."""
    from fmnist_jax.training import state as train_state

    cnn_config.schedule.name, cnn_config.schedule.warmup_epochs = "warmup_cosine", 1.0
    cnn_config.tensorboard.enabled = True
    run.run(cnn_config, tmp_path)
    logged = [v for _, v in read_scalars(tmp_path)["epoch/learning_rate"]]
    expected = train_state.learning_rates_at(cnn_config, 4, [3, 7])
    assert len(set(expected)) == 2
    np.testing.assert_allclose(logged, expected, rtol=1e-6)


def test_a_finished_run_trained_on_keeps_only_its_new_final_scores(two_epoch_run):
    """Resumed at its last step with more epochs, a finished run is scored again: TensorBoard shows the test scores
    and the hyper-parameters of the longer run alone, not the shorter one's beside them."""
    config, workdir = two_epoch_run
    config.num_epochs, config.resume_with_changes = 3, True
    results = run.run(config, workdir)
    scalars = read_scalars(workdir)
    assert scalars["test/accuracy"] == [(12, pytest.approx(results["test_accuracy"]))]
    assert [s for s, _ in scalars["validation/accuracy"]] == [4, 8, 12]
    hparams = read_scalars(workdir, events.HPARAMS_RUN)
    assert hparams["hparam/test_accuracy"] == [(12, pytest.approx(results["test_accuracy"]))]
    assert len(list((workdir / events.EVENTS_DIR / events.HPARAMS_RUN).iterdir())) == 1


def test_the_final_events_are_written_before_the_results_mark_the_run_finished(two_epoch_run, monkeypatch):
    """results.json marks a run finished: a rerun then only reports it. So TensorBoard's test scores and
    hyper-parameters are written first; a kill between the two (they were written after) lost them for good."""
    config, workdir = two_epoch_run
    (workdir / "results.json").unlink()  # scored again from its last checkpoint
    save_results, seen = metrics.save_results, []

    def look_then_save(out, results):
        hparams = read_scalars(workdir, events.HPARAMS_RUN).get("hparam/test_accuracy")
        seen.append((read_scalars(workdir).get("test/accuracy"), hparams))
        save_results(out, results)

    monkeypatch.setattr(metrics, "save_results", look_then_save)
    results = run.run(config, workdir)
    assert seen == [([(8, pytest.approx(results["test_accuracy"]))],) * 2]


def test_a_rewrite_of_the_events_cut_short_is_removed_on_resume_and_never_read(two_epoch_run):
    """A kill while the events are rewritten leaves the rewrite's temporary file; TensorBoard reads any file whose
    name holds "tfevents", so its points past the restored step would come back: the resume removes it, and
    temporary files are named apart."""
    _, workdir = two_epoch_run
    events_dir = workdir / events.EVENTS_DIR
    original = next(events_dir.glob("events.out.tfevents.*"))
    left = events_dir / f".{original.name}.abc123.tmp"  # the name an earlier version gave it
    left.write_bytes(original.read_bytes())
    events.rewind(workdir, 4)
    assert not left.exists() and [s for s, _ in read_scalars(workdir)["validation/accuracy"]] == [4]
    assert "tfevents" not in files.TEMP_PREFIX + files.TEMP_SUFFIX


def test_a_run_resumed_without_tensorboard_drops_the_events_past_its_checkpoint(two_epoch_run):
    """Turning TensorBoard off on a resume (an operational field) still takes the events back to the restored step:
    they follow the history, never the run that died."""
    config, workdir = two_epoch_run
    shutil.rmtree(workdir / "checkpoints" / "8")  # killed in epoch 2 after step 6's save, its events at step 8 kept
    (workdir / "results.json").unlink()
    config.tensorboard.enabled = False
    run.run(config, workdir)
    assert [s for s, _ in read_scalars(workdir)["validation/accuracy"]] == [4]  # step 8's came from the dead run
    assert "test/accuracy" not in read_scalars(workdir) and not (workdir / "tensorboard" / "hparams").exists()


@pytest.fixture
def fuse_like_store(tmp_path, monkeypatch):
    """Pretends tmp_path is on a FUSE mount, as /content/drive is on Colab."""
    monkeypatch.setattr(checkpoints, "_mount_type", lambda path: "fuse.drive")
    return tmp_path


def test_auto_picks_the_commit_file_on_fuse_and_rename_elsewhere(fuse_like_store, monkeypatch):
    assert checkpoints.resolve_atomicity("auto", fuse_like_store) == "commit_file"
    assert checkpoints.resolve_atomicity("auto", pathlib.Path("/content/drive/MyDrive/runs")) == "commit_file"
    monkeypatch.setattr(checkpoints, "_mount_type", lambda path: "ext4")
    assert checkpoints.resolve_atomicity("auto", fuse_like_store) == "rename"
    assert checkpoints.resolve_atomicity("rename", pathlib.Path("/content/drive/x")) == "rename"
    with pytest.raises(checkpoints.CheckpointError, match=r"checkpoint\.atomicity='copy' must be one of"):
        checkpoints.resolve_atomicity("copy", fuse_like_store)


def test_commit_file_checkpoints_resume_bit_identically_and_ignore_an_unfinished_save(
    killed_mid_save, finished_tiny_run
):
    steps = killed_mid_save.steps
    assert steps.get(4) is False and steps.get(2) is True, steps  # step 4 without its commit file, step 2 with
    assert not any(name.endswith("orbax-checkpoint-tmp") for name in killed_mid_save.names)  # no rename in this mode
    assert "Resumed from checkpoint at step 2 " in killed_mid_save.log  # the unfinished step 4 ignored
    # The same training uninterrupted, in rename form: the session's finished tiny run.
    reference = metrics.load_results(finished_tiny_run)["params_sha256"]
    assert metrics.load_results(killed_mid_save.workdir)["params_sha256"] == reference
    assert all((p / "commit_success.txt").exists() for p in (killed_mid_save.workdir / "checkpoints").glob("[0-9]*"))


# The cell's stop button (■): SIGINT to the kernel's main thread, never to main.py's process group, pressed once
# the cell has been given each pattern in turn (or after 120 s: then it says so); what the cell is given is recorded
# as it comes, at sys.stdout.write (IPython patches that for each cell and puts it back after: recorded from the cell
# that runs the command). The cell joins the presser, so that none outlives it.
STOP_BUTTON = """import threading
import time


def press_stop_after(*patterns):
    shown, write = [], sys.stdout.write
    sys.stdout.write = lambda text: shown.append(text) or write(text)

    def press():
        deadline = time.monotonic() + 120
        for pattern in patterns:
            while not re.search(pattern, "".join(shown)):
                if time.monotonic() > deadline:
                    print("NEVER SHOWN:", pattern, "in", repr("".join(shown)[-300:]))
                    break
                time.sleep(0.05)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    presser = threading.Thread(target=press, daemon=True)
    presser.start()
    return presser, shown
"""
# A run far longer than the stop takes to arrive, however fast the machine, stopped once its output has shown a
# progress bar part-way through an epoch: shown live, redrawn at every update (the notebook's own setting, 1 s, is
# printed first).
STOP_CELL = """print("PROGRESS SECONDS:", os.environ["FMNIST_PROGRESS_SECONDS"])
os.environ["FMNIST_PROGRESS_SECONDS"] = "0"
overrides = [o for o in CNN_OVERRIDES if not o.startswith("--config.num_epochs=")] + ["--config.num_epochs=1000"]
presser, shown = press_stop_after(r"epoch \\d+: +\\d+%\\|[^|]*\\| *[1-9]\\d*/\\d+")
try:
    run("--config=configs/cnn.py", f"--workdir={WORKDIR}_stopped", f"--config.data.dir={DATA_DIR}", *overrides)
except KeyboardInterrupt:
    presser.join()
    given = "".join(shown)
    stopped = given.find("interrupted (SIGINT: checkpoint saved at step ")
    print("STOPPED by the kernel, given", stopped if stopped >= 0 else repr(given[-500:]))
    print("THEN:", stopped >= 0 and "Resume with the same command" in given[stopped:])
"""
# A command that takes the first SIGINT and stops at the second: ■ twice, the second once the first has been seen.
TWICE_CELL = """script = pathlib.Path(WORKDIR).parent / "second_stop.py"
script.write_text(
    "import signal, time\\n"
    "def first(*_):\\n"
    "    print('first stop', flush=True)\\n"
    "    signal.signal(signal.SIGINT, signal.default_int_handler)\\n"
    "signal.signal(signal.SIGINT, first)\\n"
    "print('ready', flush=True)\\n"
    "time.sleep(120)\\n"
    "print('never stopped', flush=True)\\n"
)
presser, shown = press_stop_after("ready", "first stop")
try:
    follow(sys.executable, str(script))
except KeyboardInterrupt as e:
    presser.join()
    print("STOPPED TWICE:", e)
"""
# A command killed by a signal, as Colab's out-of-memory killer ends one.
KILLED_CELL = """script = pathlib.Path(WORKDIR).parent / "killed.py"
script.write_text("import os, signal\\nprint('about to go', flush=True)\\nos.kill(os.getpid(), signal.SIGKILL)\\n")
try:
    follow(sys.executable, str(script))
except RuntimeError as e:
    print("KILLED:", e)
stopped = "print('interrupted (SIGTERM: checkpoint saved at step 8 in x).')\\nprint('  python main.py')\\nexit(143)\\n"
script.write_text(stopped)
try:
    follow(sys.executable, str(script))
except RuntimeError as e:
    print("TERMINATED:", e)
"""
# The compute dtype a rerun passes: the run's own (a copy of the finished CPU run, as if begun on a TPU), unless
# its start kept nothing (its config.json alone), else the backend's (a TPU stood in for); all without JAX.
DTYPE_CELL = """import shutil

begun_on_tpu, kept_nothing = pathlib.Path(WORKDIR + "_tpu"), pathlib.Path(WORKDIR + "_empty")
shutil.copytree(WORKDIR, begun_on_tpu)
kept_nothing.mkdir()
for folder in (begun_on_tpu, kept_nothing):
    saved = json.loads((pathlib.Path(WORKDIR) / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**saved, "compute_dtype": "bfloat16"}))
print("DTYPE OWN:", dtype_flags(WORKDIR, "compute_dtype"), dtype_flags(begun_on_tpu, "compute_dtype"))
print("DTYPE NEW:", dtype_flags(WORKDIR + "_new", "compute_dtype"), dtype_flags(kept_nothing, "compute_dtype"))
print("DTYPE MEMBERS:", dtype_flags(COMPARE_WORKDIR, "members.cnn.compute_dtype", "members.speedrun.compute_dtype"))
BACKEND, probed = "tpu", BACKEND
print("DTYPE TPU:", dtype_flags(WORKDIR + "_new", "compute_dtype"), dtype_flags(WORKDIR, "compute_dtype"))
BACKEND = probed
print("JAX IN THE KERNEL:", "jax" in sys.modules)
"""


@pytest.mark.slow
def test_the_colab_notebook_runs_headlessly_with_tiny_settings(tiny_data, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "notebooks" / "colab.ipynb", as_version=4)
    parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    tiny = ["--config.num_epochs=2", *(f"--config.{k}={v}" for k, v in TINY.items())]
    compare = [
        "--config.quick=True",
        "--config.seeds=0",
        "--config.members.vgg_bn.enabled=False",  # the study's three keep the test short
        # The CNN member is the notebook's own run (seed 0), reported as it is; the baselines train on the tiny data.
        f"--config.members.cnn.workdir={tmp_path / 'cnn'}",
        *[
            f"--config.quick_overrides.{m}.data.{k}={v}"
            for m in ("random_forest", "linear_svm")
            for k, v in (("num_train", 256), ("validation_size", 64))
        ],
    ]
    parameters.source = "\n".join(
        [
            f"WORKDIR = {str(tmp_path / 'cnn')!r}",
            f"COMPARE_WORKDIR = {str(tmp_path / 'compare')!r}",
            f"DATA_DIR = {str(tiny_data)!r}",
            "REPO = ''",
            f"CNN_OVERRIDES = {tiny!r}",
            f"COMPARE_OVERRIDES = {compare!r}",
        ]
    )
    # A run that fails, as a user's typo would (a misspelt field, refused while main.py parses its flags): the cell
    # must end with main.py's own error line.
    failing = "run('--config=configs/cnn.py', '--workdir=' + WORKDIR + '_typo', '--config.model.nme=resnet')"
    notebook.cells.append(
        nbformat.v4.new_code_cell(f"try:\n    {failing}\nexcept RuntimeError as e:\n    print('FAILED:', e)")
    )
    # A crash's output ends with JAX's note on its frames, after the line that names the exception.
    crash = "Traceback (most recent call last):\\n  ...\\nTypeError: dtypes differ\\nFor simplicity, JAX has removed"
    notebook.cells.append(nbformat.v4.new_code_cell(f"print('CRASH LINE:', error_line('{crash}'))"))
    # The install's jax for each runtime, from stand-ins for what Colab installs there.
    runtimes = "{'libtpu', 'numpy'}, {'jax-cuda12-plugin', 'jax'}, {'jax', 'numpy'}"
    notebook.cells.append(nbformat.v4.new_code_cell(f"print('JAX FOR:', [jax_for(r)[0] for r in ({runtimes})])"))
    for cell in (DTYPE_CELL, KILLED_CELL, STOP_BUTTON, TWICE_CELL, STOP_CELL):
        notebook.cells.append(nbformat.v4.new_code_cell(cell))
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    # The cells' output as shown: a stream's pieces joined as they came (one print's words may come in two messages),
    # each display's data on a line of its own.
    text = "".join(
        output.get("text", "") or "\n" + json.dumps(output.get("data", {})) + "\n"
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    for skipped in ("mount Google Drive", "clone and install", "download the data", "inline TensorBoard"):
        assert f"skipped outside Colab: {skipped}" in text
    results = metrics.load_results(tmp_path / "cnn")
    assert f"test accuracy {results['test_accuracy']:.4f}" in text and "epochs in history.jsonl: [1, 2]" in text
    assert (tmp_path / "cnn" / events.EVENTS_DIR).exists()
    assert "## Summary" in text and (tmp_path / "compare" / "report.md").exists()
    assert f"cnn, seed 0: reusing the finished run in {tmp_path / 'cnn'}" in text
    # The devices, asked in a child process; the whole log streamed, from its first lines (not only the last 8).
    assert "backend cpu: 1 device(s)" in text and "Mesh: 1 cpu device(s)" in text
    assert (
        "FAILED: main.py exited with 2: error: unknown config field in --config.model.nme=resnet: config.model has no"
        ' field "nme" (did you mean "name"?)' in text
    )
    assert "CRASH LINE: TypeError: dtypes differ" in text
    pinned = re.search(r"JAX FOR: \['jax\[tpu\]==(\S+)', 'jax\[cuda12\]==\1', 'jax==\1'\]", text)
    allowed = next(r for r in (ROOT / "requirements.txt").read_text().splitlines() if r.startswith("jax>"))
    assert pinned and SpecifierSet(allowed.removeprefix("jax")).contains(pinned.group(1))  # a release it allows
    assert "NEVER SHOWN" not in text and "PROGRESS SECONDS: 1\n" in text, text[text.find("DTYPE OWN") :]
    # Stopped mid-run (its bar was given part-way), main.py's resume line given before the cell stopped.
    assert re.search(r"STOPPED by the kernel, given \d+\nTHEN: True\n", text), text[text.find("PROGRESS") :]
    assert not (tmp_path / "cnn_stopped" / "results.json").exists()
    assert "never stopped" not in text and "STOPPED TWICE: second_stop.py stopped" in text  # pressed on "first stop"
    assert (
        "KILLED: killed.py was killed by SIGKILL (on Colab, most often the runtime's memory running out); its last "
        "line: about to go" in text
    )
    assert "TERMINATED: killed.py exited with 143: interrupted (SIGTERM: checkpoint saved at step 8 in x)." in text
    begun = tmp_path / "cnn_tpu"
    assert "DTYPE OWN: ['--config.compute_dtype=float32'] ['--config.compute_dtype=bfloat16']" in text
    assert f"{begun} holds a run begun elsewhere: it goes on with its own compute_dtype=bfloat16" in text
    assert "DTYPE NEW: [] []" in text and "JAX IN THE KERNEL: False" in text
    members = "['--config.members.cnn.compute_dtype=float32', '--config.members.speedrun.compute_dtype=float32']"
    assert f"DTYPE MEMBERS: {members}" in text
    assert "DTYPE TPU: ['--config.compute_dtype=bfloat16'] ['--config.compute_dtype=float32']" in text
    assert f"{tmp_path / 'cnn'} holds a run begun elsewhere: it goes on with its own compute_dtype=float32" in text


# A kernel, as Jupyter's: the notebook's helpers, then a run far longer than the test; its output read by no one once
# the kernel is gone.
KERNEL = """import json, os, pathlib, sys
cells = json.loads(pathlib.Path("notebooks/colab.ipynb").read_text())["cells"]
exec(next("".join(c["source"]) for c in cells if "def follow(" in "".join(c["source"])))
os.environ["FMNIST_PROGRESS_SECONDS"] = "0"  # a bar's redraw at every step: writes the closed pipe refuses
run(*sys.argv[1:])
"""


def ended(pid: int) -> bool:
    """Whether process `pid` has ended (gone, or a zombie its new parent has yet to reap)."""
    return process_state(pid) in (None, "Z")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal and /proc are Linux's")
def test_a_run_outlives_no_notebook_kernel_and_saves_what_it_trained(tiny_data, tmp_path):
    """The kernel killed mid-run (a restart, a disconnect): main.py gets SIGTERM from Linux, and with its output's
    reader gone it still saves the steps it trained (none were saved before: checkpoints every million steps), ends
    and so lets go of the workdir and the devices."""
    workdir = tmp_path / "run"
    args = tiny_cnn(tiny_data, "data.validation_size=64", "num_epochs=1000", "checkpoint.every_steps=1000000")
    kernel = subprocess.Popen(
        [sys.executable, "-c", KERNEL, "--config=configs/cnn.py", f"--workdir={workdir}", *args],
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: len(metrics.read_history(workdir)) >= 2, kernel)
    main = int((workdir / files.LOCK_FILE).read_text().split()[0])
    assert main != kernel.pid and checkpoint_steps(workdir) == []
    kernel.kill()
    kernel.communicate()
    deadline = time.monotonic() + 120
    try:
        while not ended(main):
            assert time.monotonic() < deadline, "main.py trains on without its kernel"
            time.sleep(0.05)
    finally:
        if not ended(main):
            os.kill(main, signal.SIGKILL)
    trained = metrics.read_history(workdir)[-1]["step"]
    assert checkpoint_steps(workdir) and checkpoint_steps(workdir)[-1] >= trained


def tiny_cnn(data_dir: pathlib.Path, *fields: str) -> tuple[str, ...]:
    """Overrides that put a CNN config on the tiny data set, evaluated in batches of 50."""
    base = (f"data.dir={data_dir}", "eval_batch_size=50", "steps_per_call=2", *fields)
    return tuple(f"--config.{field}" for field in base)


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_the_accelerator_check_runs_on_one_device_and_reports_each_figure(tiny_data, capsys, compute_dtype):
    """Each figure, whichever dtype the config has: bfloat16 is set against float32 (a bfloat16 config's own
    figures were once labelled float32, against themselves). The second batch size is 32, smaller than the config's:
    tests/test_benchmarks.py's step times train the same CNN at batch 32 on the same 256 images, so in float32 the
    two share that train call's compiled program."""
    fields = tiny_cnn(tiny_data, "data.validation_size=64", f"compute_dtype={compute_dtype}")
    accelerator_check.main(["--steps=2", "--large_batch=32", *fields])
    rows = by_check(capsys.readouterr().out.splitlines())
    config = load_config("cnn", compute_dtype=compute_dtype)
    assert_every_check_reported(rows, config, batches=[64, 32], count=1, epoch=256, eval_batch=50)
    bf16 = rows["bfloat16"][0]["mean_loss"]
    assert bf16["float32"] != bf16["bfloat16"]  # two dtypes timed, not one twice


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ("--config=random_forest", "--config=random_forest is not a CNN's config"),
        ("--config=cnn2", "no configs/cnn2.py"),
        ("--large_batch=0", "--large_batch=0 must be at least 1"),
        (
            "--config.model.conf=xla",
            'in --config.model.conf=xla: config.model has no field "conf" (did you mean "conv"?)',
        ),
    ],
)
def test_the_accelerator_check_refuses_what_it_cannot_time_before_any_figure(capsys, args, says):
    with pytest.raises(SystemExit) as stop:
        accelerator_check.main([args])
    out, err = capsys.readouterr()
    assert stop.value.code == 2 and out == ""  # a usage error before any figure
    assert says in last_line(err)


def test_a_folder_keeps_its_checkpoint_form_when_the_setting_changes(two_epoch_run):
    _, workdir = two_epoch_run  # written in rename form: no commit files
    folder = workdir / "checkpoints"
    assert (folder / checkpoints.ATOMICITY_FILE).read_text().strip() == "rename"
    store = checkpoints.CheckpointStore(folder, atomicity="commit_file")
    try:
        assert store.atomicity == "rename" and store.all_steps() == [4, 6, 8]  # in commit form they would be deleted
    finally:
        store.close()
    assert sorted(int(p.name) for p in folder.glob("[0-9]")) == [4, 6, 8]
