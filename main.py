r"""Trains and scores the Fashion-MNIST models.

    python main.py --config=configs/cnn.py --workdir=runs/cnn [--config.FIELD=VALUE ...]

Rerunning the same command resumes from the workdir's latest checkpoint.
"""

import logging as py_logging
import os
import pathlib
import shlex
import sys
import tempfile

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "A configs/*.py file; override fields with --config.FIELD=VALUE.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Where checkpoints and results go (default: runs/<config file name>).")
flags.mark_flags_as_required(["config"])


def _own(record: py_logging.LogRecord) -> bool:
    return "fmnist_jax" in record.pathname or record.pathname.endswith("main.py")


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
    """The terminal's format: a library's warning or error as its first line alone. A failing background save
    logs several tracebacks; they go whole to the log file named at the end of the line."""

    def __init__(self, log_path: pathlib.Path):
        super().__init__()
        self.log_path = log_path

    def format(self, record: py_logging.LogRecord) -> str:
        if _own(record):
            return super().format(record)
        saved = record.msg, record.args, record.exc_info, record.exc_text
        first = (record.getMessage().splitlines() or [""])[0]
        record.msg = f"{first[:200]}{'...' if len(first) > 200 else ''} (details: {self.log_path})"
        record.args, record.exc_info, record.exc_text = None, None, None
        try:
            return super().format(record)
        finally:
            record.msg, record.args, record.exc_info, record.exc_text = saved


def _set_up_logging() -> None:
    """This project's INFO lines and the libraries' warnings on the terminal, the libraries' in one line each;
    every warning and error, tracebacks included, in a log file under --log_dir (default: the temporary folder)."""
    log_dir = pathlib.Path(FLAGS.log_dir or tempfile.gettempdir())
    log_path = log_dir / f"fmnist_jax.{os.getpid()}.log"
    terminal = logging.get_absl_handler()
    terminal.addFilter(_Terminal())
    terminal.setFormatter(_OneLinePerLibraryRecord(log_path))
    file = py_logging.FileHandler(log_path, delay=True, encoding="utf-8")
    file.addFilter(_OwnLogsOnly())
    file.setFormatter(logging.PythonFormatter())
    file.setLevel(py_logging.WARNING)
    py_logging.getLogger().addHandler(file)
    sys.unraisablehook = _unraisable_to_log_file


def _unraisable_to_log_file(unraisable) -> None:
    """Exceptions Python can only ignore (a library's callback on a closed event loop after a failed background
    save, say) go to the log file, not the terminal."""
    from fmnist_jax.errors import LOG_FILE_ONLY

    exc_info = (unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)
    logging.warning("Ignored exception in %r", unraisable.object, exc_info=exc_info, extra=LOG_FILE_ONLY)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from fmnist_jax import run  # after flags parsing
    from fmnist_jax.errors import Interrupted, UserError

    _set_up_logging()
    config_file = config_flags.get_config_filename(FLAGS["config"])
    workdir = FLAGS.workdir or str(pathlib.Path("runs") / pathlib.Path(config_file).stem)
    try:
        run.run(FLAGS.config, workdir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as e:
        command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
        print(f"interrupted ({e}). Resume with the same command:\n  {command}", file=sys.stderr)
        sys.exit(128 + e.signum)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, but a bad flag, config file or config field is one line on stderr, exit 2."""
    try:
        remaining = FLAGS(argv)
        FLAGS.config.get("kind")  # the config file loads lazily: load it now
        return remaining
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
        text = str(e).replace("\\n", " ").replace("\\'", "'")
        message = " ".join(text.strip("'\" ").split())
        if isinstance(e, AttributeError):
            message = "unknown config field: " + message.replace("'", "")
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
