"""Orbax checkpoints: save the train state with its metadata, restore the latest one that is valid.

A checkpoint is one step folder holding two items: `state` (the full `TrainState` pytree: parameters,
optimizer state with its exact structure and step, the epoch's running metric sums) and `meta` (JSON: step, epoch,
train seconds, the config, the machine it computed on and those it was trained on, the data files' checksums). Orbax
writes each step to a temporary folder and renames it when complete, or, with `checkpoint.atomicity=commit_file` (what
"auto" picks on Google Drive and other FUSE mounts, whose renames are not atomic), writes it in place and marks it
complete with a `commit_success.txt`; either way a crash during a save leaves the previous checkpoint untouched, and
the unfinished folder is never restored.
"""

from __future__ import annotations

import errno
import pathlib
import shutil
import time
import uuid
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from fmnist_jax import config_lib, files, parallel
from fmnist_jax.errors import LOG_FILE_ONLY, SEE_LOG_FILE, CheckpointError, brief, causes, traceback_text

__all__ = ["CheckpointError", "CheckpointStore"]


ATOMICITY = ("auto", "rename", "commit_file")
# Where `auto` marks finished checkpoints with a commit file: Colab's Google Drive, and FUSE mounts (gcsfuse,
# rclone, s3fs, ...), on which a rename is a slow, non-atomic copy and delete.
COMMIT_FILE_PREFIXES = ("/content/drive",)


def _mount_type(path: pathlib.Path) -> str:
    """The file system type of the mount that holds `path` (from /proc/mounts; "" where unknown)."""
    try:
        mounts = [line.split()[1:3] for line in pathlib.Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return ""
    path = str(path.resolve())
    found = [
        (len(point), fstype) for point, fstype in mounts if path == point or path.startswith(point.rstrip("/") + "/")
    ]
    return max(found)[1] if found else ""


def resolve_atomicity(setting: str, directory: pathlib.Path) -> str:
    """How a finished checkpoint is marked: "rename" (Orbax's temporary folder, renamed when complete) or
    "commit_file" (written in place, then a commit_success.txt file); "auto" picks the commit file on Drive
    and FUSE mounts."""
    if setting not in ATOMICITY:
        raise CheckpointError(f"config.checkpoint.atomicity={setting!r} must be one of {ATOMICITY}.")
    if setting != "auto":
        return setting
    on_drive = str(directory.resolve()).startswith(COMMIT_FILE_PREFIXES)
    return "commit_file" if on_drive or _mount_type(directory).startswith("fuse") else "rename"


ATOMICITY_FILE = config_lib.ATOMICITY_FILE


def trained_on(meta: dict[str, Any], machine: str | None = None) -> list[dict[str, Any]]:
    """The machines a checkpoint's steps computed on, [{"machine", "from_step"}], from its metadata: its
    `trained_on`; in older checkpoints, the `machine` that wrote it, from step 0; older still, `machine`'s (or
    none)."""
    if meta.get("trained_on"):
        return list(meta["trained_on"])
    written = meta.get("machine", machine)
    return [{"machine": written, "from_step": 0}] if written else []


def _abstract(tree: Any) -> Any:
    """Shapes, dtypes and shardings of `tree`: restoring onto them places the arrays on today's mesh."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


# Errors of the storage rather than of the checkpoint: a network file system's hiccup, a Drive timeout, too many
# open files. A checkpoint whose restore fails with one of these is never taken for damaged.
_TRANSIENT_NAMES = (
    "EIO EAGAIN EINTR EBUSY ETIMEDOUT EMFILE ENFILE ENOMEM ESTALE ENOLCK ECONNRESET ECONNABORTED ECONNREFUSED "
    "ENOTCONN ENETDOWN ENETUNREACH EHOSTUNREACH EHOSTDOWN EREMOTEIO ECOMM"
)
TRANSIENT_ERRNOS = frozenset(getattr(errno, name) for name in _TRANSIENT_NAMES.split() if hasattr(errno, name))
# The same kinds of error as the storage libraries under Orbax word them (TensorStore's status codes, strerror).
TRANSIENT_WORDS = (
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "Too many open files",
    "Input/output error",
    "Stale file handle",
    "Connection reset",
    "timed out",
)
# A device out of memory words itself as RESOURCE_EXHAUSTED too: neither the storage's fault nor the checkpoint's.
OUT_OF_MEMORY_WORDS = ("Out of memory", "out of memory", "OOM when allocating")
RESTORE_ATTEMPTS = 3
RETRY_SECONDS = 1.0  # the first retry's delay; each next one waits twice as long


def is_transient(error: BaseException) -> bool:
    """Whether `error` (or an error it was raised from) is one of the storage's transient errors: an OSError
    with an errno of TRANSIENT_ERRNOS, or a message with one of TRANSIENT_WORDS."""
    return any(
        (isinstance(e, OSError) and e.errno in TRANSIENT_ERRNOS)
        or isinstance(e, TimeoutError)
        or any(word in str(e) for word in TRANSIENT_WORDS)
        for e in causes(error)
    )


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` (or an error it was raised from) is a device out of memory (OUT_OF_MEMORY_WORDS)."""
    return any(word in str(e) for e in causes(error) for word in OUT_OF_MEMORY_WORDS)


class CheckpointStore:
    """Saves and restores train states under `directory` through an Orbax `CheckpointManager`; `read_only` (to
    predict from a run kept on storage that cannot be written): restores only, writing nothing, not even to set a
    damaged checkpoint aside."""

    def __init__(
        self,
        directory: str | pathlib.Path,
        *,
        max_to_keep: int = 3,
        async_save: bool = True,
        atomicity: str = "auto",
        read_only: bool = False,
    ):
        self.directory, self.read_only = pathlib.Path(directory).absolute(), read_only
        try:
            if read_only:  # the form the folder was written in, read as the record says
                self.atomicity = self._kept_atomicity() or resolve_atomicity(atomicity, self.directory)
            else:
                self._check_writable()
                self.atomicity = self._recorded_atomicity(resolve_atomicity(atomicity, self.directory))
        except OSError as e:
            raise CheckpointError(
                f"cannot write checkpoints to {self.directory} ({e.strerror}); choose a writable --workdir."
            ) from e
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=not read_only,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=not read_only,
            temporary_path_class=ocp.path.atomicity.CommitFileTemporaryPath
            if self.atomicity == "commit_file"
            else None,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
        self._closed = False

    @classmethod
    def for_run(
        cls, workdir: pathlib.Path, checkpoint: Any, *, async_save: bool | None = None, read_only: bool = False
    ) -> CheckpointStore:
        """The store of WORKDIR/checkpoints as `config.checkpoint` sets it up (`async_save` overrides its field)."""
        return cls(
            pathlib.Path(workdir) / config_lib.CHECKPOINTS_DIR,
            max_to_keep=checkpoint.max_to_keep,
            async_save=checkpoint.async_save if async_save is None else async_save,
            atomicity=checkpoint.atomicity,
            read_only=read_only,
        )

    def _check_writable(self) -> None:
        """Makes the folder and writes (and removes) a file there: an OSError says why it cannot hold checkpoints."""
        self.directory.mkdir(parents=True, exist_ok=True)
        probe = self.directory / f".write-test.{uuid.uuid4().hex}"  # hosts on shared storage may share a PID
        probe.write_bytes(b"")
        probe.unlink()

    def _kept_atomicity(self) -> str | None:
        """The form the folder's checkpoints were started in (ATOMICITY_FILE), None where it records none."""
        record = self.directory / ATOMICITY_FILE
        kept = record.read_text(encoding="utf-8").strip() if record.exists() else None
        return kept if kept in ATOMICITY[1:] else None

    def _recorded_atomicity(self, wanted: str) -> str:
        """The folder keeps the form it was started with (ATOMICITY_FILE): in commit-file form Orbax deletes
        every step folder without a commit file, so rename-form checkpoints must never be opened that way."""
        if kept := self._kept_atomicity():
            if kept != wanted:
                logging.info(
                    "%s holds %s-form checkpoints: keeping that form (asked: %s)", self.directory, kept, wanted
                )
            return kept
        if files.is_lead_process():  # on shared storage, one process writes the record
            files.atomic_write_text(self.directory / ATOMICITY_FILE, wanted + "\n")
        return wanted

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Starts saving `state` at `step` (in the background when async); a failure raises CheckpointError."""
        try:
            saved = self.manager.save(
                step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
            )
        except Exception as e:  # Orbax raises OSError, ValueError, or its own types
            raise CheckpointError(f"saving checkpoint {step} to {self.directory} failed: {e}") from e
        if not saved:  # Orbax skips a step it counts as saved: the run would go on without its checkpoint
            raise CheckpointError(
                f"checkpoint {step} was not saved: {self.directory} already counts steps {self.all_steps()}; "
                "rerun the same command to resume from the newest one."
            )

    def restore(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
        """The state and metadata of checkpoint `step`, placed like `target`."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(target)), meta=ocp.args.JsonRestore()),
        )
        return restored["state"], dict(restored["meta"])

    def newest_meta(self) -> dict[str, Any] | None:
        """The metadata (step, epoch, training seconds, config) of the newest checkpoint, read without its arrays;
        None when there is none or it cannot be read (the restore then finds out why)."""
        steps = self.all_steps()
        if not steps:
            return None
        try:
            return dict(self.manager.restore(steps[-1], args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
        except Exception as e:  # damaged or unreachable: not this check's to judge
            logging.info("Checkpoint %s's metadata does not read (%s)", self.directory / str(steps[-1]), brief(e))
            return None

    def restore_latest(self, target: Any, *, step: int | None = None) -> tuple[Any, dict[str, Any]] | None:
        """The newest checkpoint that restores (or checkpoint `step`); None when there is none.

        A checkpoint is set aside (moved to `checkpoints_damaged/`, by the lead process, with a warning that names
        it) only when it is shown to be damaged: its restore failed with an error that is not transient (see
        `is_transient`) and a checkpoint older than it restores, which shows that the config and the storage are
        sound (a crash while writing it leaves such a folder). A transient error is retried; when it persists,
        the run stops with a CheckpointError naming it and every checkpoint stays where it is, for the rerun.
        When none restores, nothing is moved (they may be sound and the target wrong: a config that builds a
        different model) and a CheckpointError says both what to check and what to do.
        """
        steps = self.all_steps()
        if step is not None:
            if step not in steps:
                raise CheckpointError(f"no checkpoint at step {step} in {self.directory}; available: {steps}")
            steps = [step]
        failed = []
        for s in reversed(steps):
            try:
                restored = self._restore_retrying(s, target)
            except CheckpointError:  # a transient error that persisted: stop, keep every checkpoint
                raise
            except Exception as e:  # a truncated or missing file surfaces as many exception types
                logging.warning(
                    "Checkpoint %s does not restore (%s)%s",
                    self.directory / str(s),
                    brief(e),
                    "; trying the one before." if s != steps[0] else ".",
                    extra=SEE_LOG_FILE,
                )
                logging.warning("%s", traceback_text(e), extra=LOG_FILE_ONLY)
                failed.append((s, f"{s}: {brief(e)}", e))
                continue
            for bad, _, _ in failed:  # newer than one that restores, and no transient error: damaged
                if files.is_lead_process() and not self.read_only:
                    aside = self._set_aside(bad)
                    logging.warning("Checkpoint %s is damaged; moved to %s.", self.directory / str(bad), aside)
            # Every process, once the lead has moved them (an all-gather in a multi-process job), reads the folder
            # again: Orbax would otherwise still count the moved steps, and refuse to save them again.
            if parallel.max_over_processes(len(failed)):
                self.manager.reload()
            return restored
        if failed:
            config = self.directory.parent / "config.json"
            listing = "; ".join(message for _, message, _ in failed).rstrip(".")
            raise CheckpointError(
                f"no valid checkpoint in {self.directory}: {listing}. If this run's config builds a different model "
                f"than the one in {config}, run with that config; if the checkpoints are damaged, move them away or "
                "delete the folder to start again."
            ) from failed[0][2]  # the newest one's error, whole in the log file the line names
        return None

    def _restore_retrying(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
        """`restore`, retried after a transient error; one that persists is a CheckpointError that keeps the
        checkpoint (it is not shown to be damaged)."""
        for attempt in range(RESTORE_ATTEMPTS):
            try:
                return self.restore(step, target)
            except Exception as e:
                if is_out_of_memory(e):
                    raise CheckpointError(
                        f"checkpoint {self.directory / str(step)} could not be restored: the device ran out of memory "
                        f"({brief(e)}); it is kept: free the device (another process may hold it) and rerun the "
                        "same command."
                    ) from e
                if not is_transient(e):
                    raise
                if attempt == RESTORE_ATTEMPTS - 1:
                    raise CheckpointError(
                        f"checkpoint {self.directory / str(step)} could not be read ({brief(e)}), "
                        f"{RESTORE_ATTEMPTS} attempts; it is kept: rerun the same command to "
                        "resume from it once the storage answers."
                    ) from e
                delay = RETRY_SECONDS * 2**attempt
                logging.warning(
                    "Reading checkpoint %s failed (%s); retrying in %.1f s.",
                    self.directory / str(step),
                    brief(e),
                    delay,
                    extra=SEE_LOG_FILE,
                )
                logging.warning("%s", traceback_text(e), extra=LOG_FILE_ONLY)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _set_aside(self, step: int) -> pathlib.Path:
        """Moves a damaged step folder out of the way (never deleted: it may hold something worth saving), beside
        any earlier one of that step (`STEP`, `STEP.1`, ...)."""
        folder = self.directory.parent / f"{self.directory.name}_damaged"
        folder.mkdir(parents=True, exist_ok=True)
        aside, n = folder / str(step), 0
        while aside.exists():
            n += 1
            aside = folder / f"{step}.{n}"
        shutil.move(self.directory / str(step), aside)
        return aside

    def wait(self) -> None:
        """Blocks until a background save has finished; a failed one raises CheckpointError."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise CheckpointError(f"a checkpoint save to {self.directory} failed: {e}") from e

    def check(self, *, wait: bool = False) -> None:
        """Raises CheckpointError now where a background save has failed; without `wait`, never waits for one still
        under way (Orbax would raise it only when the next save starts, which may be many epochs on:
        `checkpoint.every_steps`); with it (before the next save, which would wait anyway), waits. Every process of a
        job calls it at the same point and all raise if any process's save failed (one all-gather): one stopping
        alone would leave the others waiting in their next collective."""
        failed = None
        if wait or not self.manager.is_saving_in_progress():
            try:
                self.wait()  # nothing pending: returns at once, or raises the failed save's error
            except CheckpointError as e:
                failed = e
        if parallel.max_over_processes(int(failed is not None)):
            raise failed or CheckpointError(
                f"a checkpoint save to {self.directory} failed on another process of the job; its error says why."
            )

    def close(self) -> None:
        """Finishes any pending save, then releases the manager (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.wait()
        finally:
            self.manager.close()
            self._await_leftover_cleanup()

    def close_over(self, exc_type, exc, tb) -> bool:
        """`close` as an `ExitStack.push` exit: where an error is already on its way out, a failed save is logged
        beside it, not raised in its place (a NaN loss or a second Ctrl-C must not read as a full disk)."""
        try:
            self.close()
        except CheckpointError as e:
            if exc is None:
                raise
            logging.warning("%s (while stopping for %s)", e, type(exc).__name__)
        return False

    def _await_leftover_cleanup(self) -> None:
        """Waits for the manager's removal of the temporary folders earlier runs left: Orbax starts it in a thread when
        the manager is made and its `close` does not wait for it, so a store made next on the same folder (a rerun in
        the same process) would remove the same folders at the same time, and its first save fail on one already
        gone. A failure here leaves leftovers, which every store ignores. (Orbax's attribute, read if it has it.)"""
        cleanup = getattr(self.manager, "_cleanup_tmp_directory_future", None)
        if cleanup is None:
            return
        try:
            cleanup.result()
        except Exception as e:  # leftovers stay, harmless
            logging.info("Removing the temporary folders left in %s failed (%s)", self.directory, brief(e))
