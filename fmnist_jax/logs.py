"""Logging for the command line: this project's INFO lines on the terminal, each library's warning as one line
there, and every warning and error with its traceback in a log file (the terminal line names it)."""

from __future__ import annotations

import errno
import functools
import logging as py_logging
import math
import os
import pathlib
import stat
import sys
import tempfile

from absl import logging

from fmnist_jax import files
from fmnist_jax.errors import LOG_FILE_ONLY, ConfigError

PACKAGE = pathlib.Path(__file__).resolve().parent
MAIN = PACKAGE.parent / "main.py"
PROGRESS_ENV = "FMNIST_PROGRESS_SECONDS"


def progress_seconds() -> float:
    """How often a progress bar redraws: $FMNIST_PROGRESS_SECONDS (a notebook, whose output is a pipe that shows a
    redrawn line in place, sets it to 1), else every second on a terminal and every 30 s into a file or a pipe (a
    log then holds a line per 30 s, not one per step)."""
    value = os.environ.get(PROGRESS_ENV, "")
    if not value:
        return 1.0 if sys.stderr is not None and sys.stderr.isatty() else 30.0
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds < math.inf:
        raise ConfigError(f"{PROGRESS_ENV}={value!r}: give the seconds between progress redraws (e.g. 1), or unset it")
    return seconds


@functools.cache
def _own_file(pathname: str) -> bool:
    path = pathlib.Path(pathname).resolve()
    return path == MAIN or PACKAGE in path.parents


def _own(record: py_logging.LogRecord) -> bool:
    """Whether `record` comes from this project (the package or main.py), by where its file lies: not by a name in
    its path, which a checkout in a folder named like the package would give every library under it."""
    return _own_file(record.pathname)


def _whole_on_the_terminal(record: py_logging.LogRecord) -> bool:
    """Whether the terminal shows `record` whole: this project's, without an error attached, its details elsewhere
    or a place in the log file alone. The others are one line there (naming the log file), or none."""
    flagged = getattr(record, "see_log_file", False) or getattr(record, "log_file_only", False)
    return _own(record) and not record.exc_info and not flagged


class _OwnLogsOnly(py_logging.Filter):
    """Keeps this project's INFO lines and every library's warnings (Orbax logs each save at INFO)."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        return record.levelno >= py_logging.WARNING or _own(record)


class _Terminal(_OwnLogsOnly):
    """What the terminal shows: as `_OwnLogsOnly`, less the records meant for the log file only, and asyncio's
    (a failed background save's orphaned tasks are reported at interpreter exit, after the run's last line)."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        return super().filter(record) and not getattr(record, "log_file_only", False) and record.name != "asyncio"


class _OneLinePerLibraryRecord(logging.PythonFormatter):
    """The terminal's format: a library's warning or error as its first line alone, and this project's with an error
    attached (or its details in a record of the log file's, `SEE_LOG_FILE`) as its line alone. A failing background
    save logs several tracebacks; they go whole to the log file named at the end of the line."""

    def __init__(self, log_path: pathlib.Path):
        super().__init__()
        self.log_path = log_path

    def format(self, record: py_logging.LogRecord) -> str:
        own = _own(record)
        if _whole_on_the_terminal(record):
            return super().format(record)
        saved = record.msg, record.args, record.exc_info, record.exc_text
        first = (record.getMessage().splitlines() or [""])[0]
        if not own and len(first) > 200:
            first = first[:200] + "..."
        record.msg = first + details(self.log_path)
        record.args, record.exc_info, record.exc_text = None, None, None
        try:
            return super().format(record)
        finally:
            record.msg, record.args, record.exc_info, record.exc_text = saved


def set_up(log_dir: str | None = None) -> pathlib.Path:
    """This project's INFO lines and the libraries' warnings on the terminal, the libraries' in one line each;
    every warning and error, tracebacks included, in a log file under --log_dir (default: the temporary folder).
    A bad $FMNIST_PROGRESS_SECONDS is refused here, before anything runs; stdout and stderr go on when their reader
    has gone (`_OutputOrNowhere`)."""
    progress_seconds()
    _output_or_nowhere()
    folder = pathlib.Path(log_dir or tempfile.gettempdir())
    try:  # now, not at the first warning: a log file that cannot be opened then would end the run there
        folder.mkdir(parents=True, exist_ok=True)
        if not files.writable(folder):
            raise PermissionError(errno.EACCES, "not writable")
    except OSError as e:
        raise ConfigError(
            f"--log_dir={log_dir or folder}: cannot write a log file there ({e.strerror}); name a writable folder"
            + ("." if log_dir is None else ", or drop --log_dir for the temporary folder.")
        ) from e
    log_path = folder / f"fmnist_jax.{os.getpid()}.log"
    terminal = logging.get_absl_handler()
    terminal.addFilter(_Terminal())
    terminal.setFormatter(_OneLinePerLibraryRecord(log_path))
    file = _LogFile(log_path, delay=True, encoding="utf-8")
    file.kept = bool(log_dir)  # asked for by --log_dir (absl's default: "")
    _FILES[:] = [file]
    file.addFilter(_OwnLogsOnly())
    file.setFormatter(logging.PythonFormatter())
    file.setLevel(py_logging.WARNING)
    py_logging.getLogger().addHandler(file)
    sys.unraisablehook = _unraisable_to_log_file
    return log_path


def finish() -> None:
    """At the end of main.py: removes the log file `set_up` opened where every record in it was shown whole on the
    terminal and no --log_dir asked for it, so that runs do not fill the temporary folder with copies of what they
    printed. A file with a library's warning, a traceback or a record for the log file alone stays."""
    for file in _FILES:
        if not (file.kept or file.needed):
            file.close()  # still attached: a record after this (asyncio's at exit, say) makes the file again
            pathlib.Path(file.baseFilename).unlink(missing_ok=True)
    _FILES.clear()


_FILES: list[_LogFile] = []  # the log file `set_up` opened


class _LogFile(py_logging.FileHandler):
    """The log file's handler: when a record cannot be written (a full disk under --log_dir, the file not opened), it
    says so once on the terminal and stops, instead of Python's twenty-line report of every later record."""

    needed = False  # whether it holds a record the terminal did not show whole (`finish` keeps it then)

    def emit(self, record: py_logging.LogRecord) -> None:
        self.needed = self.needed or not _whole_on_the_terminal(record)
        try:
            super().emit(record)
        except Exception:  # opening the file (delayed to the first record) is outside FileHandler's own guard
            self.handleError(record)

    def handleError(self, record: py_logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        why = " ".join(str(error).split())[:200]
        if not isinstance(error, OSError):  # a record that cannot be formatted: that record alone is lost
            print(f"warning: a log record could not be written to {self.baseFilename} ({why})", file=sys.stderr)
        elif self.level <= py_logging.CRITICAL:
            self.setLevel(py_logging.CRITICAL + 1)  # nothing more goes there
            print(
                f"warning: the log file {self.baseFilename} cannot be written ({why}); no more is logged there",
                file=sys.stderr,
            )


def details(log_file: str | os.PathLike) -> str:
    """What a line shown alone adds to say where the rest of it is: " (details: LOG)"."""
    return f" (details: {log_file})"


def _output_or_nowhere() -> None:
    """sys.stdout and sys.stderr as `_OutputOrNowhere`, absl's handler writing through the new sys.stderr (it prints
    a record again where its stream is not sys.stderr)."""
    handler = logging.get_absl_handler().python_handler
    on_stderr = handler.stream is sys.stderr
    sys.stdout = None if sys.stdout is None else _OutputOrNowhere(sys.stdout)  # None: started without that file
    sys.stderr = None if sys.stderr is None else _OutputOrNowhere(sys.stderr)
    if on_stderr:
        handler.stream = sys.stderr


class _OutputOrNowhere:
    """sys.stdout or sys.stderr that goes on when its reader has gone (a notebook's kernel restarted, a pipe's reader
    ended, a terminal closed): from the first write that finds the pipe closed or the terminal hung up, its file
    descriptor writes to /dev/null. A run stopped then (the notebook's SIGTERM, the terminal's SIGHUP) saves its
    checkpoint and ends as it would, where its first progress bar's write would have ended it with nothing saved."""

    def __init__(self, stream):
        self._stream = stream

    def __getattr__(self, name: str):  # only for what the class lacks: `_stream` before __init__ (a copy) too
        if name == "_stream" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._stream, name)

    def _unless_gone(self, call, *args):
        try:
            return call(*args)
        except OSError as e:
            if e.errno == errno.EPIPE:  # BrokenPipeError
                why = "its pipe's reader has gone"
            elif e.errno == errno.EIO and stat.S_ISCHR(os.fstat(self._stream.fileno()).st_mode):  # not a disk's EIO
                why = "its terminal hung up"
            else:
                raise
            fd, null = self._stream.fileno(), os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)  # for every later write, this process's C code's and Python's exit
            os.close(null)
            name = getattr(self._stream, "name", fd)
            logging.warning("From here %s goes to /dev/null: %s.", name, why, extra=LOG_FILE_ONLY)  # the file kept
            return call(*args)  # what the closed pipe or terminal refused, now to /dev/null

    def write(self, text: str) -> int:
        return self._unless_gone(self._stream.write, text)

    def flush(self) -> None:
        self._unless_gone(self._stream.flush)


def _unraisable_to_log_file(unraisable) -> None:
    """Exceptions Python can only ignore (a library's callback on a closed event loop after a failed background
    save, say) go to the log file, not the terminal."""
    exc_info = (unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)
    logging.warning("Ignored exception in %r", unraisable.object, exc_info=exc_info, extra=LOG_FILE_ONLY)
