r"""Trains and scores the Fashion-MNIST models.

    python main.py --config=configs/cnn.py --workdir=runs/cnn [--config.FIELD=VALUE ...]

Rerunning the same command resumes from the workdir's latest checkpoint.
"""

import os
import pathlib
import signal
import sys


def open_missing_outputs() -> None:
    """Started without stdin, stdout or stderr (`2>&-`): /dev/null takes their place before any file is opened, so
    that no file gets their number (C code's writes to stderr would land in it; a child process inherits them) and
    the progress bars have somewhere to go."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        if getattr(sys, name) is None:
            null = os.open(os.devnull, os.O_RDONLY if mode == "r" else os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd)  # inheritable
                os.close(null)
            else:
                os.set_inheritable(fd, True)
            stream = open(fd, mode, encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
            setattr(sys, name, stream)


open_missing_outputs()
try:
    import fmnist_jax  # noqa: F401 (refuses a platform it cannot run on, saying why)
except ImportError as e:
    if isinstance(e, ModuleNotFoundError):  # not its refusal: Python's own error stands
        raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)

import ml_collections  # noqa: E402
from absl import app, flags, logging  # noqa: E402 (after the outputs are in place)
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
ROOT = pathlib.Path(__file__).resolve().parent
config_flags.DEFINE_config_file(
    "config", None, "A configs/*.py file; override fields with --config.FIELD=VALUE.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Where checkpoints and results go (default: runs/<config file name>).")
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    from fmnist_jax import logs, run  # after flags parsing
    from fmnist_jax.errors import LOG_FILE_ONLY, Interrupted, UserError, traceback_text

    workdir = FLAGS.workdir or default_workdir()
    log_file = None
    try:
        log_file = logs.set_up(FLAGS.log_dir)
        run.run(FLAGS.config, workdir, given=set(config_flags.get_override_values(FLAGS["config"])))
    except UserError as e:
        details = ""
        if log_file and e.__cause__ is not None:  # a library's error behind it, whole, with its traceback
            logging.warning("error: %s\n%s", e, traceback_text(e), extra=LOG_FILE_ONLY)
            details = logs.details(log_file)  # the file is kept: it holds what the terminal did not show
        print(f"error: {e}{details}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as e:
        stopped(f"interrupted ({e}). Resume with the same command:", e.signum)
    except KeyboardInterrupt:  # Ctrl-C where no guard holds it (the final scoring, a second Ctrl-C): one line too
        from fmnist_jax.preemption import UNFINISHED

        stopped(f"interrupted (SIGINT, {UNFINISHED}). Go on with the same command:", signal.SIGINT)
    finally:
        if sys.exc_info()[0] in (None, SystemExit):  # an end it chose, not a crash: a crash keeps the log file
            logs.finish()  # the log file goes where the terminal showed all it holds


def default_workdir() -> str:
    """Where a run goes without --workdir: runs/<config file name>."""
    return str(pathlib.Path("runs") / pathlib.Path(config_flags.get_config_filename(FLAGS["config"])).stem)


def stopped(line: str, signum: int) -> None:
    """Ends main.py stopped by signal `signum`: `line`, then the command to run again, and exit 128 + signum."""
    from fmnist_jax import preemption

    print(preemption.rerun_text(line), file=sys.stderr)
    sys.exit(128 + signum)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, but a bad flag, config file or config field, or a stray argument, is one line on
    stderr, exit 2."""
    from fmnist_jax import flag_errors

    try:
        remaining = FLAGS(argv)
        FLAGS.config.get("kind")  # the config file loads lazily: load it now
        if not isinstance(FLAGS.config, ml_collections.ConfigDict):  # a dict has .get too: named by flag_error
            raise TypeError(f"get_config() returned {type(FLAGS.config).__name__}")
        flag_errors.split_listed_words(FLAGS.config, config_flags.get_override_values(FLAGS["config"]))
    except Exception as e:  # whatever the flags or the config file raised, in one line
        print(f"error: {flag_errors.flag_error(argv, e, ROOT / 'configs')}", file=sys.stderr)
        sys.exit(2)
    if len(remaining) > 1:
        print(f"error: unexpected arguments {remaining[1:]}: settings are flags, --config.FIELD=VALUE", file=sys.stderr)
        sys.exit(2)
    if FLAGS["workdir"].present and not (FLAGS.workdir or "").strip():  # `--workdir=$DIR` with DIR unset
        print(
            f"error: --workdir names no folder ({FLAGS.workdir!r}): give the run's folder, or leave the flag out "
            f"for {default_workdir()}",
            file=sys.stderr,
        )
        sys.exit(2)
    return remaining


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
