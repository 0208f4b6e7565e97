"""Writing a workdir's files safely: atomic writes, the one-run-per-workdir lock, a full disk in one line.

Every file a run writes (config.json, history.jsonl, results.json, predictions) goes to a temporary file in
the same folder, is flushed to disk and renamed over the old one: a crash or a full disk leaves the old file
or the new one, never half of either. A workdir is locked by the run that uses it with `fcntl.flock`, a
kernel lock that dies with its process (SIGKILL and reboots included), so a stale lock never blocks a rerun.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import os
import pathlib
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator

from absl import logging

from fmnist_jax.errors import DiskFull, WorkdirBusy, WorkdirError, causes

LOCK_FILE = ".lock"
# The launchers' variables that give a process its rank in a multi-process job (JAX's own, SLURM, Open MPI, a TPU
# pod's hosts).
RANK_VARIABLES = ("JAX_PROCESS_ID", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "TPU_WORKER_ID")
# The temporary files of atomic writes: hidden, and named apart from what readers look for (TensorBoard reads any
# file whose name holds "tfevents", a half-written one too).
TEMP_PREFIX, TEMP_SUFFIX = ".atomic-", ".tmp"
BEFORE_SUFFIX = ".before"  # `replace_undoably`'s copy of what it replaced: .config.json.before


def is_lead_process() -> bool:
    """Whether this process writes the workdir's files and logs progress: process 0 of a multi-process job.
    Once JAX is imported its process index says (`jax.distributed` has then set it); runs that never import
    JAX (baselines, comparisons) read the launcher's rank from the environment."""
    if "jax" in sys.modules:
        return sys.modules["jax"].process_index() == 0
    return all((os.environ.get(v) or "0") == "0" for v in RANK_VARIABLES)  # an empty variable is unset


def stop_together(what: str) -> contextlib.AbstractContextManager:
    """Around a check process 0 may be alone to fail: `parallel.stop_together` once JAX is imported (the run may be
    one process of a job); without JAX a run is one process's (`run`), with nothing to agree on."""
    if "jax" not in sys.modules:
        return contextlib.nullcontext()
    from fmnist_jax import parallel

    return parallel.stop_together(what)


def lead_decides(decision: bool) -> bool:
    """Process 0's `decision` on every process (`parallel.lead_decides`) once JAX is imported; else `decision`."""
    if "jax" not in sys.modules:
        return decision
    from fmnist_jax import parallel

    return parallel.lead_decides(decision)


def rank_description() -> str:
    """The launcher's rank variables that are set, as `NAME=VALUE` (for a message about the process's rank)."""
    return ", ".join(f"{v}={os.environ[v]}" for v in RANK_VARIABLES if os.environ.get(v)) or "no rank variable set"


def not_a_folder(path: pathlib.Path, folder: str = "a folder") -> str | None:
    """Why something at `path` cannot be used as a folder: "a file, not FOLDER", or a symbolic link to nothing;
    None where it is a folder, or where nothing is there."""
    if path.is_symlink() and not path.exists():
        return f"a symbolic link to {path.readlink()}, which does not exist"
    return f"a file, not {folder}" if path.exists() and not path.is_dir() else None


def _umask() -> int:
    """The process's umask, read without changing it (os.umask sets it, racing with other threads' files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        return 0o022


def writable(folder: str | os.PathLike) -> bool:
    """Whether files can be made in `folder`: False where it is missing or on read-only storage (even for root)."""
    return os.access(folder, os.W_OK | os.X_OK)


def atomic_write_bytes(path: str | os.PathLike, content: bytes) -> None:
    """Writes `content` to `path` through a temporary file in the same folder, fsync, a rename and an fsync of the
    folder (without it, a power loss may undo the rename)."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _before(path: pathlib.Path) -> pathlib.Path:
    """The hidden file that keeps the text `replace_undoably` replaced in `path`, beside it."""
    return path.with_name(f".{path.name}{BEFORE_SUFFIX}")


def replace_undoably(path: str | os.PathLike, text: str, before: str | None) -> None:
    """Writes `text` to `path` (atomically), first keeping `before`, the text it replaces (None: none), in a hidden
    file beside it, until `keep_replacement` drops it: a process killed before then (no `finally` runs) has its
    replacement undone by the next `undo_killed_writes` there."""
    path = pathlib.Path(path)
    if before is not None:
        atomic_write_text(_before(path), before)
    atomic_write_text(path, text)


def keep_replacement(path: str | os.PathLike) -> None:
    """Makes `replace_undoably`'s write of `path` final."""
    _before(pathlib.Path(path)).unlink(missing_ok=True)


def undo_killed_writes(locked_at: float, folder: pathlib.Path, *more: pathlib.Path, replaced: tuple[str, ...]) -> None:
    """What writes cut short by a kill left in `folder` (and the folders `more`), undone: their temporary files
    removed, and the files named `replaced` that `replace_undoably` replaced and never kept put back. Only by the
    process holding the workdir's lock, of files older than the time it took it (`locked_at`): the other processes of
    its job write only after it has, and a younger file is theirs, under way."""
    for where in (folder, *more):
        for leftover in where.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}") if where.is_dir() else ():
            if _older(leftover, locked_at):
                leftover.unlink(missing_ok=True)
                logging.info("Removed %s, a write that a kill cut short", leftover)
    for name in replaced:
        if _older(before := _before(folder / name), locked_at):
            atomic_write_bytes(folder / name, before.read_bytes())
            before.unlink()
            logging.warning("%s put back as it was: the start that replaced it was killed first", folder / name)


def _older(path: pathlib.Path, than: float) -> bool:
    try:
        return path.stat().st_mtime < than
    except FileNotFoundError:  # not there, or renamed or removed meanwhile by the process that wrote it
        return False


def _fsync_folder(folder: pathlib.Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a file system that cannot open folders: the rename stands as the system keeps it
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (FUSE mounts) refuse a folder's fsync
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def is_disk_full(error: BaseException) -> bool:
    """Whether `error`, or any exception it was raised from, is 'no space left' (or a quota exceeded)."""
    return any(
        (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT))
        or "No space left on device" in str(e)
        or "RESOURCE_EXHAUSTED: No space" in str(e)
        for e in causes(error)
    )


def disk_full_error(workdir: str | os.PathLike, doing: str, rerun: str = "") -> DiskFull:
    """The one-line error for a full disk: what was being written, where, and how to go on (`rerun`: what the same
    command does when run again, such as "it resumes from the last complete checkpoint")."""
    return DiskFull(
        f"the disk holding {workdir} is full (no space left while {doing}); free some space and rerun the same "
        f"command{f': {rerun}' if rerun else ''}."
    )


def outermost_missing(path: pathlib.Path) -> pathlib.Path | None:
    """The outermost of `path` and its parents that does not exist (`path` itself for a new folder in an existing
    one; runs/a for runs/a/b where runs alone exists); None where `path` exists."""
    missing = None
    while not path.exists() and path != path.parent:
        missing, path = path, path.parent
    return missing


def remove_made(path: pathlib.Path, made: pathlib.Path) -> None:
    """Removes `path` whole, then its parents up to `made` (the outermost folder a command made for it:
    `outermost_missing`) while they are empty: one that another command has put something in meanwhile stays."""
    with contextlib.suppress(OSError):
        shutil.rmtree(path)
        for parent in path.parents:
            if parent.name == "..":  # runs/a/../b: a, made on the way, is the next one
                continue
            if made not in (parent, *parent.parents):
                break
            parent.rmdir()


def _holder(path: pathlib.Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").split()
    except OSError:
        return "another process"
    if len(text) >= 3:
        pid, host, since = text[:3]
        return f"process {pid} on host {host} since {since}"
    return "another process"


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike) -> Iterator[float | None]:
    """Holds `workdir`'s lock for the duration of the `with`, giving the time it was taken (None: not locked, on a
    file system without locks); raises WorkdirBusy if a live process has it.

    The lock file keeps the holder's pid, host and start time, for the error message of a second run; its
    presence alone means nothing. A file system without locks (some network mounts) runs unlocked, with a
    warning.
    """
    workdir = pathlib.Path(workdir)
    path = workdir / LOCK_FILE
    try:
        for attempt in range(3):  # a parent that another run's refused start removes meanwhile is made again
            try:
                workdir.mkdir(parents=True, exist_ok=True)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full_error(workdir, f"creating {path}") from e
        why = not_a_folder(workdir) or e.strerror
        raise WorkdirError(f"cannot use {workdir} as a workdir ({why}); choose a writable --workdir.") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusy(
                f"{workdir} is in use by {_holder(path)}; wait for it to finish or choose another --workdir."
            ) from None
        except OSError as e:  # ENOLCK, EOPNOTSUPP: the file system cannot lock
            logging.warning("cannot lock %s (%s): not protected against a second run in the same workdir", path, e)
            locked = False
        else:
            locked = True
        since = datetime.datetime.now().strftime("%H:%M:%S")
        with contextlib.suppress(OSError):  # the holder line is a courtesy; a full disk must not stop the run
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()} {since}\n".encode(), 0)
        locked_at = None
        with contextlib.suppress(OSError):  # by the file system's clock, which files written after it show at least
            locked_at = os.fstat(fd).st_mtime  # (not written: an earlier time, which keeps more; never a later one)
        yield locked_at if locked else None
    finally:
        os.close(fd)  # releases the lock
