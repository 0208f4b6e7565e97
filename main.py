r"""Trains and scores the Fashion-MNIST models.

    python main.py --config=configs/cnn.py --workdir=runs/cnn [--config.FIELD=VALUE ...]

Rerunning the same command resumes from the workdir's latest checkpoint.
"""

import pathlib
import runpy
import shlex
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
ROOT = pathlib.Path(__file__).resolve().parent
config_flags.DEFINE_config_file(
    "config", None, "A configs/*.py file; override fields with --config.FIELD=VALUE.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Where checkpoints and results go (default: runs/<config file name>).")
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    from fmnist_jax import logs, run  # after flags parsing
    from fmnist_jax.errors import Interrupted, UserError

    logs.set_up(FLAGS.log_dir)
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


def _config_file(argv: list[str]) -> str | None:
    """The --config flag's value in `argv` (--config=FILE or --config FILE)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _flag_error(argv: list[str], error: Exception) -> str:
    """One line for a flag, config file or config field that absl or ml_collections refused with `error`."""
    name = _config_file(argv)
    if name is not None:
        path = pathlib.Path(name)
        configs = ", ".join(sorted(c.name for c in (ROOT / "configs").glob("[!_]*.py") if c.stem != "common"))
        if not path.is_file():
            return f"--config={name}: no such file (the configs in {ROOT / 'configs'}: {configs})"
        try:
            config = runpy.run_path(str(path), run_name="config_file")["get_config"]()
        except Exception as e:  # any failure of the user's file, in one line
            return (
                f"--config={name} could not be loaded as a config file ({type(e).__name__}: {e}); --config takes a "
                f"Python file whose get_config() returns the config, such as configs/cnn.py"
            )
        from fmnist_jax import config_lib

        for arg in argv:
            if arg.startswith("--config."):
                why = config_lib.unknown_field(config, arg[len("--config.") :].split("=", 1)[0], source=name)
                if why:
                    return f"unknown config field in {arg}: {why}"
    text = " ".join(str(error).replace("\\n", " ").replace("\\'", "'").split())
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]  # a KeyError's quotes
    return text


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, but a bad flag, config file or config field, or a stray argument, is one line on
    stderr, exit 2."""
    try:
        remaining = FLAGS(argv)
        FLAGS.config.get("kind")  # the config file loads lazily: load it now
    except Exception as e:  # whatever the flags or the config file raised, in one line
        print(f"error: {_flag_error(argv, e)}", file=sys.stderr)
        sys.exit(2)
    if len(remaining) > 1:
        print(f"error: unexpected arguments {remaining[1:]}: settings are flags, --config.FIELD=VALUE", file=sys.stderr)
        sys.exit(2)
    return remaining


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
