"""A run's record survives: one run per workdir, history that is the lineage of the final parameters, a full
disk, and a comparison killed at any moment. (Scoring one checkpoint on 1 and 8 devices: tests/test_integration.py.)"""

import copy
import dataclasses
import errno
import json
import logging
import os
import pathlib
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import ml_collections
import pytest
from helpers import (
    ROOT,
    assert_same_run,
    checkpoint_steps,
    is_stopped,
    last_line,
    load_config,
    quick_compare_config,
    run_interrupted,
    run_main,
    snapshot,
    start_main,
    subprocess_env,
    tiny_args,
    tiny_config,
    wait_for,
    without_timings,
)

from fmnist_jax import config_lib, files, metrics, run


def tiny_run(tiny_data, workdir, **overrides):
    return run_main(*tiny_args(tiny_data, workdir, **overrides))


@dataclasses.dataclass(frozen=True)
class Reference:
    """A finished run: its config, workdir, fingerprint and history."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    sha: str
    history: list[dict]

    def assert_same_run(self, workdir: pathlib.Path) -> None:
        """The run in `workdir` has this run's history (timings apart) and final parameters."""
        assert_same_run(workdir, self.workdir)


@pytest.fixture(scope="module")
def finished(tiny_data, finished_tiny_run) -> Reference:
    """The session's uninterrupted tiny run (tests/conftest.py), trained in the test process with a checkpoint every
    2 steps (4, 6 and 8 kept). Its train calls are those of a checkpoint per epoch (2 steps each), so a tiny run
    with either gives the same bits. Tests read its workdir or copy it, never change it."""
    config = tiny_config(tiny_data, **{"checkpoint.every_steps": 2})
    workdir = finished_tiny_run
    return Reference(config, workdir, metrics.load_results(workdir)["params_sha256"], metrics.read_history(workdir))


# ------------------------------------------------------------------------------------------ one run per workdir


def test_a_second_run_on_a_locked_workdir_exits_2_naming_the_holder_and_changes_nothing(tiny_data, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "history.jsonl").write_text('{"epoch": 1}\n')
    with files.workdir_lock(workdir):
        before = snapshot(workdir)
        result = tiny_run(tiny_data, workdir, num_epochs=1)
        assert snapshot(workdir) == before
    assert result.returncode == 2
    last = last_line(result.stderr)
    pattern = (
        rf"error: {re.escape(str(workdir))} is in use by process {os.getpid()} on host "
        rf"{re.escape(socket.gethostname())} since \d\d:\d\d:\d\d; wait for it to finish or choose another --workdir\."
    )
    assert re.fullmatch(pattern, last), last
    assert "Traceback" not in result.stderr


def test_a_lock_left_by_a_killed_process_never_blocks_the_rerun(finished, tmp_path):
    # The rerun of a finished run: it takes the workdir's lock before it looks at anything there.
    workdir = tmp_path / "run"
    shutil.copytree(finished.workdir, workdir)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from fmnist_jax import files\n"
            "with files.workdir_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(600)",
            str(workdir),
        ],
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(files.WorkdirBusy, match=f"in use by process {holder.pid} "):
        run.run(finished.config, workdir)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (workdir / files.LOCK_FILE).exists()  # the file stays; only a live lock counts
    results = run.run(finished.config, workdir)
    assert results["test_accuracy"] > 0 and results["params_sha256"] == finished.sha


def test_two_runs_started_together_train_once(tiny_data, tmp_path, finished):
    # The first run stops itself (SIGSTOP) after its first epoch, so the second (in this process) surely starts
    # while it holds the workdir, however fast the machine; then it goes on.
    first = start_main(
        *tiny_args(tiny_data, tmp_path), script=(str(ROOT / "tests" / "interrupt.py"), "STOP", "1", "epoch")
    )
    wait_for(lambda: is_stopped(first), first)
    with pytest.raises(files.WorkdirBusy, match=f"is in use by process {first.pid} "):
        run.run(tiny_config(tiny_data), tmp_path)
    first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    finished.assert_same_run(tmp_path)


def test_a_file_system_that_cannot_lock_lets_the_run_go_on_with_a_warning(tmp_path, monkeypatch, caplog):
    """Where flock is not supported (ENOLCK, EOPNOTSUPP: some network file systems) the run goes on unprotected and
    says so, naming the lock file; it gives no time it locked at, so that no start undoes what may be another's
    write under way. Locked, the time is the lock file's own (the clock the files written after it show)."""

    with files.workdir_lock(tmp_path / "locked") as locked_at:
        assert locked_at == (tmp_path / "locked" / files.LOCK_FILE).stat().st_mtime

    def cannot_lock(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(files.fcntl, "flock", cannot_lock)
    caplog.set_level(logging.WARNING)
    with files.workdir_lock(tmp_path) as locked_at:
        assert locked_at is None
        (tmp_path / "trained").touch()  # the run inside goes on
    assert (tmp_path / "trained").exists() and "not protected against a second run in the same workdir" in caplog.text
    assert str(tmp_path / files.LOCK_FILE) in caplog.text
    assert (tmp_path / files.LOCK_FILE).read_text().startswith(f"{os.getpid()} ")  # the holder still named


def test_the_comparison_locks_its_workdir_and_its_members(tmp_path):
    config = quick_compare_config(tmp_path / "unused")
    with files.workdir_lock(tmp_path), pytest.raises(files.WorkdirBusy, match=f"{re.escape(str(tmp_path))} is in use"):
        run.run(config, tmp_path)
    assert not (tmp_path / "config.json").exists()
    member = tmp_path / "cnn" / "seed_0"
    with files.workdir_lock(member), pytest.raises(files.WorkdirBusy, match=f"{re.escape(str(member))} is in use"):
        run.run(config, tmp_path)


# ------------------------------------------------------------------------------------------ history lineage


def test_a_run_killed_before_its_first_checkpoint_reruns_with_each_epoch_once(tiny_data, tmp_path, finished):
    # The only checkpoint is the last step's, saved after epoch 2's history line: killed between the two, the run
    # has written both epochs' lines and committed no checkpoint.
    no_checkpoints = {"checkpoint.every_steps": 1000}
    killed = run_interrupted("KILL", 2, "epoch", *tiny_args(tiny_data, tmp_path, **no_checkpoints))  # after epoch 2
    assert killed.returncode == -signal.SIGKILL and len(metrics.read_history(tmp_path)) == 2
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]  # none committed
    run.run(tiny_config(tiny_data, **no_checkpoints), tmp_path)
    assert [r["epoch"] for r in metrics.read_history(tmp_path)] == [1, 2]
    finished.assert_same_run(tmp_path)


def test_what_a_start_killed_before_its_checks_left_half_done_is_undone_by_the_next(two_epoch_run):
    """SIGKILL runs no `except`: a start with more epochs (resume_with_changes) killed after writing its config.json,
    before its checks passed, left that config.json beside the shorter run's scores (so the run's own command was
    refused), and a kill inside an atomic write its temporary file. The next start puts config.json back as it was
    and removes the temporary files: the run's own command reports it finished, nothing else left."""
    config, workdir = two_epoch_run
    before = snapshot(workdir)
    longer = copy.deepcopy(config)
    longer.num_epochs, longer.resume_with_changes = 3, True
    config_lib.save_or_check(longer, workdir)  # all the killed start did
    assert json.loads((workdir / "config.json").read_text())["num_epochs"] == 3
    for folder in (workdir, workdir / "checkpoints"):
        (folder / f"{files.TEMP_PREFIX}cut{files.TEMP_SUFFIX}").write_text("half")
    for path in workdir.rglob(".*"):  # the killed start's files, older than the next start's lock
        os.utime(path, (time.time() - 60,) * 2)
    young = workdir / f"{files.TEMP_PREFIX}under_way{files.TEMP_SUFFIX}"  # another process of the job is writing,
    young.write_text("being written")
    os.utime(young, (time.time() + 60,) * 2)  # after the lock was taken (its processes write only after it)
    assert run.run(config, workdir) == metrics.load_results(workdir)
    young.unlink()  # left alone
    after = snapshot(workdir)
    assert {k: v for k, v in after.items() if k != files.LOCK_FILE} == {
        k: v for k, v in before.items() if k != files.LOCK_FILE
    }
    run.run(longer, workdir)  # and the longer command, started again, goes on as it would have
    assert len(metrics.read_history(workdir)) == 3 and not list(workdir.glob(f".*{files.BEFORE_SUFFIX}"))


def can_attach_a_terminal() -> bool:
    """Whether util-linux's `setsid --ctty` and pseudo-terminals are here, and SIGHUP is not ignored (nohup)."""
    if sys.platform != "linux" or signal.getsignal(signal.SIGHUP) == signal.SIG_IGN or not shutil.which("setsid"):
        return False
    usage = subprocess.run(["setsid", "--help"], capture_output=True, text=True, check=False)
    return "--ctty" in usage.stdout and pathlib.Path("/dev/ptmx").exists()


@pytest.mark.slow
@pytest.mark.skipif(
    not can_attach_a_terminal(), reason="needs `setsid --ctty`, pseudo-terminals and SIGHUP not ignored"
)
def test_a_closed_terminal_stops_the_run_with_what_it_trained_saved(tiny_data, tmp_path):
    """The terminal or SSH session a run is attached to closes: SIGHUP, then writes that fail with EIO. The run saves
    the steps it trained (none were saved before: checkpoints every million steps), exits 128 + SIGHUP, and its log
    file says why its output ended."""
    workdir, logs = tmp_path / "run", tmp_path / "logs"
    args = tiny_args(tiny_data, workdir, num_epochs=1000, **{"checkpoint.every_steps": 10**6})
    terminal, attached = pty.openpty()
    main = subprocess.Popen(  # its own session, the pseudo-terminal its controlling terminal
        ["setsid", "--ctty", sys.executable, str(ROOT / "main.py"), *args, f"--log_dir={logs}"],
        stdin=attached,
        stdout=attached,
        stderr=attached,
        env=subprocess_env(),
        cwd=ROOT,
    )
    os.close(attached)
    shown, closing = [], threading.Event()

    def read_the_terminal():  # as a terminal does: a full one would block the run's writes
        while not closing.is_set():
            try:
                if select.select([terminal], [], [], 0.05)[0]:
                    shown.append(os.read(terminal, 1 << 16))
            except OSError:  # EIO once the run has closed its end
                return

    reader = threading.Thread(target=read_the_terminal, daemon=True)
    reader.start()
    try:
        try:
            wait_for(lambda: len(metrics.read_history(workdir)) >= 2, main)
        finally:
            closing.set()
            reader.join()
            os.close(terminal)  # the terminal closes
        assert main.wait(timeout=120) == 128 + signal.SIGHUP
    finally:
        if main.poll() is None:
            main.kill()
            main.wait()
        print(b"".join(shown)[-2000:].decode(errors="replace"))  # what the terminal showed, for a failure's report
    trained = metrics.read_history(workdir)[-1]["step"]
    assert checkpoint_steps(workdir) and checkpoint_steps(workdir)[-1] >= trained
    assert b"epoch 1/1000" in b"".join(shown)  # the terminal showed the run until it closed
    (log,) = logs.glob("*.log")
    assert "SIGHUP received" in log.read_text()
    assert "From here <stderr> goes to /dev/null: its terminal hung up." in log.read_text()


def test_history_beyond_the_restored_checkpoint_is_cut_back(tmp_path, finished):
    # History two lines beyond the only committed checkpoint, epoch 1's (step 4): lines for epochs 1-3 were
    # written, the checkpoints after the first were lost (a full disk, say).
    workdir = tmp_path / "run"
    shutil.copytree(finished.workdir, workdir)
    for step in (6, 8):
        shutil.rmtree(workdir / "checkpoints" / str(step))
    files.atomic_write_text(workdir / "history.jsonl", "".join(f'{{"epoch": {e}}}\n' for e in (1, 2, 3)))
    (workdir / "results.json").unlink()
    run.run(finished.config, workdir)
    records = metrics.read_history(workdir)
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[0] == {"epoch": 1}  # the restored state's own epoch is kept as it was
    assert without_timings(records[1:]) == without_timings(finished.history[1:])
    assert metrics.load_results(workdir)["params_sha256"] == finished.sha


# ------------------------------------------------------------------------------------------ a full disk


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 3 MB tmpfs (root only): too small for the first checkpoint of the CNN's 5 MB train state."""
    folder = tmp_path / "small"
    folder.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(folder)], check=False, capture_output=True
        ).returncode
    ):
        if os.environ.get("CI"):
            pytest.fail("CI runs as root and must be able to mount a tmpfs")
        pytest.skip("mounting a tmpfs needs root")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_ends_with_one_line_and_the_rerun_resumes(tiny_data, small_tmpfs, finished):
    workdir = small_tmpfs / "run"
    result = tiny_run(tiny_data, workdir)
    assert result.returncode == 2
    last, details = last_line(result.stderr).split(" (details: ")  # the library's error whole in the log file
    assert last == (
        f"error: the disk holding {workdir} is full (no space left while saving a checkpoint); free some space "
        "and rerun the same command: it resumes from the last complete checkpoint."
    )
    assert len(last) <= 300 and "No space left" in pathlib.Path(details.removesuffix(")")).read_text()
    for name in ("config.json", "history.jsonl"):  # whole or absent, never truncated
        if (workdir / name).exists():
            text = (workdir / name).read_text()
            assert text.endswith("\n") and all(line.strip() for line in text.splitlines())
    metrics.read_history(workdir)  # every line parses
    subprocess.run(["mount", "-o", "remount,size=200M", str(small_tmpfs)], check=True)
    run.run(tiny_config(tiny_data), workdir)  # the same run, in this process
    finished.assert_same_run(workdir)


# ------------------------------------------------------------------------------------------ the comparison


TIMINGS = ("train_seconds", "predict_seconds", "seconds", "fit_seconds")


def report_numbers(workdir: pathlib.Path) -> tuple[Any, list[str]]:
    """report.json and report.md with the timings and the workdir's own path taken out."""

    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in TIMINGS}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node.replace(str(workdir), "W") if isinstance(node, str) else node

    lines, section = [], ""
    for line in (workdir / "report.md").read_text().replace(str(workdir), "W").splitlines():
        section = line if line.startswith("## ") else section
        if not (line.startswith("| ") and section in ("## Summary", "## Seeds")):  # timings; numbers in report.json
            lines.append(line)
    return strip(json.loads((workdir / "report.json").read_text())), lines


@pytest.mark.slow
def test_a_comparison_killed_at_any_moment_reruns_to_the_same_report(tiny_data, tmp_path):
    # The reference and the last rerun run in this process, the three killed runs as main.py.
    overrides = {
        "quick": True,
        "seeds": (0,),
        # Speed only: the tiny runs' calls of 2 steps and evaluation batch, so the CNN shares their compiled programs.
        "members.cnn.steps_per_call": 2,
        "members.cnn.eval_batch_size": 50,
        "members.vgg_bn.enabled": False,  # the study's three: the kill moments are theirs
    }
    for name in ("cnn", "random_forest", "linear_svm"):
        overrides[f"members.{name}.data.dir"] = str(tiny_data)
        overrides[f"quick_overrides.{name}.data.num_train"] = 256
        overrides[f"quick_overrides.{name}.data.validation_size"] = 64
    args = ["--config=configs/compare.py", "--config.seeds=0"]
    args += [f"--config.{k}={v}" for k, v in overrides.items() if k != "seeds"]
    reference = tmp_path / "reference"
    run.run(load_config("compare", **overrides), reference)

    # Each kill from inside, at its moment (tests/interrupt.py), and what it left: the members before it finished,
    # its own not, no report.
    workdir = tmp_path / "killed"
    members = ["cnn", "random_forest", "linear_svm"]
    moments = {
        "during the CNN's training (its first checkpoint saved)": ((2, "committed"), []),
        "during the forest's fit": ((1, "fit"), ["cnn"]),
        "while the report is written (its first plot saved)": ((1, "report"), members),
    }
    for moment, (when, done) in moments.items():
        killed = run_interrupted("KILL", *when, *args, f"--workdir={workdir}")
        assert killed.returncode == -signal.SIGKILL, f"{moment}: {killed.stderr[-2000:]}"
        assert [m for m in members if (workdir / m / "seed_0" / "results.json").exists()] == done, moment
        assert not (workdir / "report.md").exists(), moment
    assert any((workdir / "plots").iterdir())  # the report half-written
    assert (workdir / "config.json").read_text() == (reference / "config.json").read_text()  # the same comparison
    run.run(load_config("compare", **overrides), workdir)
    assert report_numbers(workdir) == report_numbers(reference)
    for name in ("cnn", "random_forest", "linear_svm"):
        for seed in (0,):
            run_dir = pathlib.Path(name) / f"seed_{seed}"
            ours, theirs = metrics.load_results(workdir / run_dir), metrics.load_results(reference / run_dir)
            assert ours["test_accuracy"] == theirs["test_accuracy"]
            assert ours.get("params_sha256") == theirs.get("params_sha256")
