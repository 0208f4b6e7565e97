"""Every error a user can meet: main.py prints the message of a `UserError` as one line instead of a traceback.

Each message names the file, field or value at fault and how to fix it.
"""

import pathlib
import signal
import traceback
from collections.abc import Iterator

# `extra=` for a log record that belongs in main.py's log file but not on the terminal (a long library error).
LOG_FILE_ONLY = {"log_file_only": True}
# `extra=` for a terminal line whose details follow in a LOG_FILE_ONLY record: the line names the log file.
SEE_LOG_FILE = {"see_log_file": True}


def causes(error: BaseException | None) -> Iterator[BaseException]:
    """`error` and the exceptions it was raised from (`__cause__`, else `__context__`), each once: a library's error
    often wraps the one that says what happened (a full disk, a timeout, a device out of memory)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


# Where a library's one-line message turns into a reference to its own objects (TensorStore appends a bound method's
# repr), `brief` stops; the whole message stays in the log file.
NOT_FOR_A_MESSAGE = ("See full TensorStore details", "<bound method")


def brief(error: BaseException, limit: int = 200) -> str:
    """`error` in one short line for a message: "Type: its first line", whitespace collapsed, cut at a word before
    `limit` characters with "...". A library's message may run to pages (a TensorStore spec): its whole text and
    traceback belong in the log file."""
    lines = str(error).strip().splitlines()
    first = " ".join(lines[0].split()) if lines else ""
    if (cut := min((first.find(m) for m in NOT_FOR_A_MESSAGE if m in first), default=-1)) >= 0:
        first, lines = first[:cut].rstrip(" .:;,") + ".", lines[:1]  # a library's pointer to its own objects
    if len(first) > limit or len(lines) > 1:
        first = (first[:limit].rsplit(" ", 1)[0] if len(first) > limit else first) + " ..."
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def traceback_text(error: BaseException) -> str:
    """`error`'s whole traceback, its causes' too, as text, for a log record; then clears the frames' locals (an
    exception's frames keep a library's pending coroutines alive, to be closed at some later collection, after
    their event loop has closed)."""
    text = "".join(traceback.format_exception(error)).rstrip()
    for each in causes(error):
        traceback.clear_frames(each.__traceback__)
    return text


class UserError(Exception):
    """Bad input, config or environment; the message names the file, field or value and how to fix it."""


class ConfigError(UserError):
    """A config field with a value this code cannot run."""


class DataError(UserError):
    """A data set that is missing, malformed or inconsistent; the message says which file and how to fix it."""


class ParallelError(UserError):
    """A batch size or device set-up that the mesh cannot run."""


class CheckpointError(UserError):
    """A checkpoint folder that cannot be written or holds nothing restorable; the message names it."""


class TrainingError(UserError):
    """Training cannot go on (a NaN loss, a failed checkpoint save); the message says what to change."""


class ResultsError(UserError):
    """A results file that is missing or does not follow the schema; the message names the file."""


class PredictError(UserError):
    """An input that cannot be read as an image; the message names every such file."""


class WorkdirError(UserError):
    """A workdir that cannot be used: unwritable, locked by another run, or on a full disk."""


class WorkdirBusy(WorkdirError):
    """Another live process holds the workdir's lock."""


class DiskFull(WorkdirError):
    """The disk under the workdir has no space left; the message names the folder and how to go on."""


class Interrupted(Exception):
    """Training stopped on SIGTERM, SIGINT or SIGHUP after saving a checkpoint at `step`, or, with `saved` False,
    before its first step (nothing new to save: the run goes on from `step`, its newest checkpoint's, or 0)."""

    def __init__(self, signum: int, step: int, directory: pathlib.Path, *, saved: bool = True):
        self.signum, self.step, self.directory, self.saved = signum, step, directory, saved
        name = signal.Signals(signum).name
        if saved:
            message = f"{name}: checkpoint saved at step {step} in {directory}"
        elif step:
            message = f"{name} before training resumed: nothing new to save, the checkpoint at step {step} stays"
        else:
            message = f"{name} before training began: nothing trained, nothing saved"
        super().__init__(message)
