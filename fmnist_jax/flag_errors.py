"""One line for the command line's mistakes (main.py): a missing or broken config file, an override of a field the
config lacks (with the close matches), a value of the wrong type for its field, or else the library's own message.
And a list of words given with commas read as the list it names (`split_listed_words`).
"""

from __future__ import annotations

import ast
import difflib
import pathlib
import re
import runpy
import traceback
from collections.abc import Callable, Collection, Mapping

import ml_collections

from fmnist_jax import config_lib


def unknown_field(config: ml_collections.ConfigDict, field: str, *, source: str = "the config file") -> str | None:
    """Why the dotted path `field` names no field of `config` ('config.model has no field "conf" (did you mean
    "conv"?)'), or None when it does: for the errors of --config.FIELD=VALUE overrides (`source`: the file that
    lists the fields)."""
    node, where = config, "config"
    for part in field.split("."):
        if not isinstance(node, (Mapping, ml_collections.ConfigDict)):
            return f"{where} is a value, not a group of fields"
        if part not in node:
            keys = sorted(node.keys())
            close = difflib.get_close_matches(part, keys, n=1)
            if close:
                hint = f'did you mean "{close[0]}"?'
            else:
                hint = f"its fields: {', '.join(keys)}" if len(keys) <= 12 else f"see {source} for its fields"
            return f'{where} has no field "{part}" ({hint})'
        node, where = node[part], f"{where}.{part}"
    return None


_CONFIG_FLAG = re.compile(r"^--?config(?:=(.*))?$")


def unknown_override(
    config: ml_collections.ConfigDict,
    args: list[str],
    *,
    source: Callable[[str], str],
    prefix: str = "config",
    elsewhere: Callable[[str], list[str]] | None = None,
) -> str | None:
    """'unknown config field in ARG: WHY' for the first --PREFIX.FIELD=VALUE (or --noPREFIX.FIELD) of `args` that
    names no field of `config` (`unknown_field`; `source(field)` names the file that lists its fields), or None;
    `elsewhere(field)` names the config files that have the field, if any."""
    flag = re.compile(rf"^--?(?:no)?{re.escape(prefix)}\.([^=]+)")
    for arg in args:
        if (match := flag.match(arg)) and (why := unknown_field(config, match.group(1), source=source(match.group(1)))):
            others = elsewhere(match.group(1)) if elsewhere else []
            named = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
            has = f"; {named} {'has' if len(others) == 1 else 'have'} it" if others else ""
            return f"unknown config field in {arg}: {why}{has}"
    return None


def _config_files(configs_dir: pathlib.Path) -> list[pathlib.Path]:
    """The config files of `configs_dir`, by name (not __init__.py, nor common.py's shared parts)."""
    return sorted(c for c in configs_dir.glob("[!_]*.py") if c.stem != "common")


def configs_with(field: str, configs_dir: pathlib.Path, but: pathlib.Path | None = None) -> list[str]:
    """The config files of `configs_dir` (but `but`) whose config has the dotted `field`, as configs/NAME.py."""
    found = []
    for path in _config_files(configs_dir):
        if but is not None and path.resolve() == but.resolve():
            continue
        try:
            config = runpy.run_path(str(path), run_name="config_file")["get_config"]()
        except Exception:  # a file that needs a parameter, or another's broken file: not one to point at
            continue
        if unknown_field(config, field) is None:
            found.append(f"{configs_dir.name}/{path.name}")
    return found


def flag_error(argv: list[str], error: Exception, configs_dir: pathlib.Path) -> str:
    """One line for the flags in `argv` that absl or ml_collections refused with `error` (main.py): a missing or
    broken config file (with the line that failed), an override of a field the config lacks (`unknown_field`), a
    value its field's type refuses, or the library's own message."""
    name = None
    for i, arg in enumerate(argv):  # the last --config wins, as in absl
        if match := _CONFIG_FLAG.match(arg):
            name = match.group(1) if match.group(1) is not None else (argv[i + 1] if i + 1 < len(argv) else None)
    configs = ", ".join(c.name for c in _config_files(configs_dir))
    if name is None:  # absl's "Flag --config must have a value other than None", or an error of another flag
        if re.search(r"--config\b|flag '?config\.", str(error)):  # --config.FIELD without --config: "unknown flag"
            return f"no --config given: name a config file, e.g. --config=configs/cnn.py (in {configs_dir}: {configs})"
        return " ".join(str(error).split())
    path, param = pathlib.Path(name), []
    if not path.is_file() and ":" in name:  # FILE:PARAMETER, passed to get_config
        head, tail = name.split(":", 1)
        path, param = pathlib.Path(head), [tail]
    if not path.is_file():
        what = "a folder, not a config file" if path.is_dir() else "no such file"
        return f"--config={name}: {what} (the configs in {configs_dir}: {configs})"
    try:
        config = runpy.run_path(str(path), run_name="config_file")["get_config"](*param)
    except Exception as e:  # any failure of the user's file, in one line with where it happened
        frames = [f for f in traceback.extract_tb(e.__traceback__) if pathlib.Path(f.filename) == path]
        where = f" at {path}:{frames[-1].lineno}" if frames else ""
        hint = "" if path.suffix == ".py" else "; --config takes a Python file whose get_config() returns a config"
        if isinstance(e, KeyError) and e.args == ("get_config",):
            hint = f"; a config file defines get_config() (the configs in {configs_dir}: {configs})"
        return f"--config={name} could not be loaded as a config file ({type(e).__name__}{where}: {e}){hint}"
    if not isinstance(config, ml_collections.ConfigDict):
        return (
            f"--config={name}: its get_config() returned {'None' if config is None else type(config).__name__}, not "
            "an ml_collections.ConfigDict; return one (as the configs in configs/ do)"
        )

    def source(field: str) -> str:  # a comparison member's fields are in its own config file
        member = re.match(r"members\.([^.]+)\.", field)
        own = member and f"{configs_dir.name}/{member.group(1)}.py"
        return own if own and (configs_dir.parent / own).is_file() else name

    if why := unknown_override(config, argv, source=source, elsewhere=lambda f: configs_with(f, configs_dir, path)):
        return why
    text = " ".join(str(error).replace("\\n", " ").replace("\\'", "'").split())
    if why := wrong_type(config, argv, text):
        return why
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]  # a KeyError's quotes
    return text


def wrong_type(config: ml_collections.ConfigDict, argv: list[str], text: str, prefix: str = "config") -> str | None:
    """For a parser's refusal `text` of --PREFIX.FIELD=VALUE: the type FIELD takes (that of a None placeholder too)
    and the config file's value; None when the field takes another type (the parser's text then stands)."""
    if not (bad := re.match(rf"flag --{re.escape(prefix)}\.([\w.]+)=", text)):
        return None
    field = bad.group(1)
    flag = rf"--?{re.escape(prefix)}\.{re.escape(field)}="
    value = next((a.split("=", 1)[1] for a in reversed(argv) if re.match(flag, a)), "")
    parent, _, key = field.rpartition(".")
    try:
        kind = (config_lib.get(config, parent) if parent else config).get_type(key)
        current = config_lib.get(config, field)
    except (AttributeError, KeyError, TypeError):
        return None
    takes = {bool: "True or False", int: "an integer", float: "a number"}.get(kind)
    if takes is None:
        return None
    if value.lower() == "none":
        return (
            f"--{prefix}.{field}={value}: {prefix}.{field} takes {takes}, not None, on the command line; leave the "
            f"flag out for the config file's {current!r}"
        )
    return f"--{prefix}.{field}={value}: {prefix}.{field} takes {takes} (the config file's: {current!r})"


def split_listed_words(config: ml_collections.ConfigDict, overrides: Collection[str]) -> None:
    """Reads each list field of `overrides` (dotted paths) that the command line gave as words with commas as the
    list it names: ml_collections reads `--config.seeds=0,1` as (0, 1) but keeps
    `--config.search.grid.max_features=sqrt,log2` whole, as ('sqrt,log2',). Each item is read as Python reads a
    literal (0.1, True), else kept as a word; empty items (a trailing comma) are dropped. The other forms stand:
    the flag given once per item, or a quoted literal, "('sqrt', 0.1)"."""
    for field in overrides:
        value = config_lib.get(config, field)
        if not isinstance(value, tuple) or not any(isinstance(v, str) and "," in v for v in value):
            continue
        items = [part.strip() for v in value for part in (v.split(",") if isinstance(v, str) else [v])]
        parent, _, key = field.rpartition(".")
        (config_lib.get(config, parent) if parent else config)[key] = tuple(
            _literal_or_word(item) for item in items if item != ""
        )


def _literal_or_word(item: object) -> object:
    """`item` as a Python literal where it is one ("0.1" -> 0.1), else as it is (a word, or an item already read)."""
    if not isinstance(item, str):
        return item
    try:
        return ast.literal_eval(item)
    except (ValueError, SyntaxError):
        return item
