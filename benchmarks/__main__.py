"""`python -m benchmarks NAME [flags]`: runs sub-command NAME; `python -m benchmarks --help` lists them."""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import pathlib
import sys

from benchmarks import COMMANDS


def summary(module: str) -> str:
    """The first line of `module`'s docstring, read without importing it (no JAX start-up for --help)."""
    path = pathlib.Path(importlib.util.find_spec(module).origin)
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {summary(module)}" for name, module in COMMANDS.items()]
    return "\n".join(
        [
            "usage: python -m benchmarks NAME [flags]   (python -m benchmarks NAME --help: its flags)",
            "",
            "Every figure is one JSON line with the machine it was measured on. NAME is one of:",
            *lines,
        ]
    )


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        sys.exit(0 if argv else 2)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        by_module = [n for n, module in COMMANDS.items() if module.rsplit(".", 1)[-1] == name]  # its file's name
        close = by_module or difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"{usage()}\n\nerror: no benchmark named {name!r}{hint}", file=sys.stderr)
        sys.exit(2)
    from benchmarks import common
    from fmnist_jax import logs
    from fmnist_jax.errors import UserError

    try:
        logs.progress_seconds()  # a bad $FMNIST_PROGRESS_SECONDS refused before anything is timed
        importlib.import_module(COMMANDS[name]).main(rest)
    except (common.UsageError, UserError) as e:
        print(f"python -m benchmarks {name}: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
