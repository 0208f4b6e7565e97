"""Errors a user acts on: main.py prints their message as one line instead of a traceback."""

import pathlib
import signal

# `extra=` for a log record that belongs in main.py's log file but not on the terminal (a long library error).
LOG_FILE_ONLY = {"log_file_only": True}


class UserError(Exception):
    """Bad input, config or environment; the message names the file, field or value and how to fix it."""


class ConfigError(UserError):
    """A config field with a value this code cannot run."""


class CheckpointError(UserError):
    """A checkpoint folder that cannot be written or holds nothing restorable; the message names it."""


class Interrupted(Exception):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint at `step`."""

    def __init__(self, signum: int, step: int, directory: pathlib.Path):
        self.signum, self.step, self.directory = signum, step, directory
        super().__init__(f"{signal.Signals(signum).name}: checkpoint saved at step {step} in {directory}")
