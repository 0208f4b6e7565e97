"""The workdir's config contract: validate a config, save it as `config.json`, refuse a changed one.

A workdir belongs to one experiment. Rerunning in it with a different config would silently mix two runs,
so differing fields stop the run, except fields that only change speed (always allowed) and fields that are
safe to change on resume (allowed with `--config.resume_with_changes=True`, never ending a run before its newest
checkpoint); a config.json left by a start that kept nothing may be replaced. `evaluate` and `predict` use the model
(and data) the workdir was trained with: a field set on the command line to another value is refused.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import pathlib
import re
import shlex
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

import ml_collections
from absl import logging

from fmnist_jax import files, metrics
from fmnist_jax.errors import ConfigError

CONFIG_FILE = "config.json"
# Never compared: how fast or how a run is driven, not what it computes.
# The data's location is operational too: results.json and each checkpoint record the checksums of the files read
# (a resume on other files is refused: training/plan.py).
OPERATIONAL = (
    "resume_with_changes",
    "mode",
    "steps_per_call",
    "scan_unroll",
    "eval_batch_size",
    "host_overlap",
    "compilation_cache",
    "model.conv",
    "model.verbose",  # a baseline's fit printing its progress
    "checkpoint.async_save",
    "checkpoint.atomicity",
    "tensorboard.",
    "checkpoint.step",
    "predict.",
    "data.dir",
    "data.source",
)
# A comparison's seeds and members' switches and folders: each member's run guards its own config.json, so adding a
# seed or a member, leaving one out or naming a finished run's folder reuses the runs there are.
COMPARISON_CHOICES = re.compile(r"seeds|members\.[^.]+\.(enabled|workdir)")
# Besides the model and data (which `evaluate` refuses to change), the fields that change what a checkpoint scores:
# scored with another value, a finished run's checkpoint is scored apart from its results (training/evaluate.py).
SCORING_FIELDS = ("tta_flip", "tta_shift", "compute_dtype")
# Fields added to a CNN's config since config.json was first written, each with the value that computes what runs
# before it computed: a config.json without one reads as holding that value, so a run started by an earlier version
# resumes, and is evaluated, as it was.
ADDED_CNN_FIELDS = {"tta_shift": 0}
# Compared, but may change with --config.resume_with_changes=True.
SAFE_TO_CHANGE = ("num_epochs", "checkpoint.every_steps", "checkpoint.max_to_keep", "compute_dtype")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as plain JSON-able data (tuples become lists, as they would in config.json)."""
    return json.loads(config.to_json())


def matches(field: str, patterns: tuple[str, ...]) -> bool:
    """Whether the dotted `field` is one of `patterns` ("a.b") or under one ("a."); a comparison's member fields
    ("members.NAME.a.b") follow the member's rules."""
    field = re.sub(r"^members\.[^.]+\.", "", field)  # a comparison's member fields follow the member's rules
    return any(field == p or (p.endswith(".") and field.startswith(p)) for p in patterns)


def diff(saved: Mapping[str, Any], requested: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ (missing on one side counts), operational fields left out, and a comparison's
    member fields where the member is off on either side (a member off computes nothing here: a new default in its
    config file, or a member joining or leaving, changes no run of the comparison's)."""
    a, b = flatten(saved), flatten(requested)
    off = {name for config in (saved, requested) for name, m in _members(config).items() if m.get("enabled") is False}
    return {
        k: (a.get(k), b.get(k))
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
        and not matches(k, OPERATIONAL)
        and not COMPARISON_CHOICES.fullmatch(k)
        and not any(k.startswith(f"members.{m}.") for m in off)
    }


def _members(config: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """A comparison's member configs by name (none in a run's config)."""
    members = config.get("members")
    return {k: m for k, m in members.items() if isinstance(m, Mapping)} if isinstance(members, Mapping) else {}


def as_fields_of(message: str, prefix: str) -> str:
    """`message` (a ConfigError's) with its `config.FIELD` and `--config.FIELD` named as `PREFIX.FIELD`: a comparison
    member's (`config.members.NAME`) or a benchmark's other config (`compare`); config.json stays as it is."""
    return re.sub(r"(?<![\w./])(--)?config\.(?!json\b)", rf"\1{prefix}.", message)


def get(config: ml_collections.ConfigDict, field: str) -> Any:
    """The value of the dotted path `field` ("checkpoint.every_steps") in `config`."""
    value = config
    for part in field.split("."):
        value = value[part]
    return value


# What a checkpoint or saved model was trained as: `evaluate` and `predict` refuse a config that differs here,
# `evaluate` also in what it is scored on (another seed or split would score training images as held out).
MODEL_FIELDS = ("model.", "ema_decay")
DATA_FIELDS = ("seed", "data.")
# All that a start which failed before computing anything (bad data, a batch larger than the split) leaves in its
# workdir: a config.json there with nothing else may be replaced by any config (see `kept_nothing`).
NOTHING_COMPUTED = (CONFIG_FILE, files.LOCK_FILE)
CHECKPOINTS_DIR = "checkpoints"
ATOMICITY_FILE, COMMIT_FILE = "ATOMICITY", "commit_success.txt"  # the checkpoints' form; Orbax's commit in place
MODEL_FILE, FIT_FILE = "model.joblib", "fit.json"  # a baseline's fitted model and its fit's record (baselines.py's)
BASELINE_MODELS = ("random_forest", "linear_svm")  # their config.model.name and results.json's `model`
EVENTS_DIR = "tensorboard"  # the TensorBoard events' folder (events.py's; named here, where no JAX is imported)


def steps_per_epoch(num_train_images: int, batch_size: int) -> int:
    """A CNN run's steps per epoch: the whole batches in its training split (a last partial batch is dropped)."""
    return num_train_images // batch_size


def last_step(num_train_images: int, batch_size: int, num_epochs: int) -> int:
    """The step a CNN run ends at: its steps per epoch times its epochs."""
    return steps_per_epoch(num_train_images, batch_size) * num_epochs


def checkpoint_steps(workdir: pathlib.Path) -> list[int]:
    """The steps of WORKDIR/checkpoints' step folders, oldest first, read from their names (no Orbax); in the
    commit-file form (`checkpoints.py`), only folders with Orbax's commit file: one without is a save cut short."""
    folder = workdir / CHECKPOINTS_DIR
    form = folder / ATOMICITY_FILE
    in_place = form.is_file() and form.read_text(encoding="utf-8").strip() == "commit_file"
    steps = [p for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
    return sorted(int(p.name) for p in steps if not in_place or (p / COMMIT_FILE).exists())


def kept_nothing(workdir: pathlib.Path) -> bool:
    """Whether `workdir` holds nothing that a rerun would go on from: besides NOTHING_COMPUTED, at most a checkpoint
    folder without a step, a history and TensorBoard events without one (a run from step 0 drops them), a baseline's
    fit record without its model (a crash between the two writes; the rerun fits again). A stop or an out-of-memory
    error while compiling, or a kill before the first checkpoint was committed, leaves such a workdir, and the next
    start may change any field."""
    no_step = not checkpoint_steps(workdir)
    for path in workdir.iterdir():
        if path.name in NOTHING_COMPUTED or path.name == EVENTS_DIR or path.name.startswith(files.TEMP_PREFIX):
            continue  # a temporary file is a write a kill cut short
        if path.name == CHECKPOINTS_DIR and no_step:
            continue
        if path.name == metrics.HISTORY_FILE and (no_step or not metrics.read_history(workdir)):
            continue
        if path.name == FIT_FILE and not (workdir / MODEL_FILE).exists():
            continue
        return False
    return True


def shortened_below_its_checkpoint(workdir: pathlib.Path, num_epochs: int) -> str | None:
    """Why `num_epochs` ends the run in `workdir` before its newest checkpoint (its steps per epoch from
    history.jsonl), or None: a run cannot be shortened below what it has trained."""
    history, steps = metrics.read_history(workdir), checkpoint_steps(workdir)
    if not history or not steps:  # no epoch ended: every checkpoint lies in the first
        return None
    per_epoch = history[0]["step"] // history[0]["epoch"]
    if steps[-1] <= num_epochs * per_epoch:
        return None
    return (
        f"{workdir} has trained to step {steps[-1]} (epoch {steps[-1] / per_epoch:g}) and config.num_epochs="
        f"{num_epochs} ends at step {num_epochs * per_epoch}; set it to {math.ceil(steps[-1] / per_epoch)} or more, "
        "or use a new --workdir."
    )


def read_saved(path: pathlib.Path) -> dict[str, Any]:
    """The config.json at `path` as data (a CNN config without a field of ADDED_CNN_FIELDS holding its value)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} cannot be read as a config ({e}); fix or delete it.") from e
    if not isinstance(saved, dict):
        raise ConfigError(f"{path} holds {type(saved).__name__}, not a config; fix or delete it.")
    if "kind" not in saved:  # every run's config names its kind
        raise ConfigError(f"{path} lacks the field 'kind': it is not a run's config; fix or delete it.")
    for tree in (saved, *_members(saved).values()):
        if tree.get("kind") == "cnn":
            for field, value in ADDED_CNN_FIELDS.items():
                tree.setdefault(field, value)
    return saved


def saved_or_none(workdir: pathlib.Path) -> dict[str, Any] | None:
    """`workdir`'s config.json (`read_saved`), or None where it has none, or none that can be read."""
    try:
        return read_saved(workdir / CONFIG_FILE)
    except ConfigError:
        return None


def trained_fields(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    *,
    evaluate: bool,
    given: Collection[str] | None = None,
) -> dict[str, Any]:
    """For `evaluate` and `predict`: the fields of the workdir's config.json that `config` should take, with their
    values: each that changes what is computed (not OPERATIONAL) and differs, unless the command line set it
    (`given`: main.py's --config.FIELD or --config.SECTION flags; None: all). A model field (`evaluate`: also the seed
    or a data field) set otherwise raises ConfigError naming the flags to drop (None: to add and drop): it would score
    other weights, fail to restore them, or score a split the model trained on; so does another kind or model."""
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.exists():
        return {}
    saved, requested = read_saved(path), to_dict(config)
    if (was := _what(saved)) != (now := _what(requested)):
        flag = flag_setting("model.name", given) if given is not None else None  # the command line named a model
        file = f"configs/{saved.get('name') or saved.get('kind')}.py"  # config.name: its file's (compare: none)
        known = (pathlib.Path(__file__).parents[1] / file).is_file()
        how = f"use the config file it was trained with{f' ({file})' if known else ''}"
        trained = (saved.get("model") or {}).get("name")
        if saved.get("name") == requested.get("name") and (flag or trained):  # the same file: a flag made the model
            how = f"drop --config.{flag}" if flag else f"add --config.model.name={trained}"
        elif flag:
            how += f", without --config.{flag}"
        if saved.get("kind") == "compare":  # which only trains and reports: its members' runs are scored
            mode = "evaluate" if evaluate else "predict"
            members, seeds = _members(saved).values(), saved.get("seeds") or ()
            named = [str(m.get("workdir") or "").replace("{seed}", str(s)) for m in members for s in seeds]
            found = [*map(pathlib.Path, filter(None, named)), *sorted(pathlib.Path(workdir).glob("*/seed_*"))]
            runs = [run for run in found if _what(saved_or_none(run) or {}) == now]
            where = f"e.g. --workdir={runs[0]}" if runs else f"none here is a {now} run ({workdir}/MEMBER/seed_SEED)"
            how = f"{mode} reads one of its members' runs, {where}"
        raise ConfigError(f"{workdir} holds a {was} run, not a {now} one; {how}.")
    changed, both = diff(saved, requested), flatten(saved).keys() & flatten(requested).keys()

    probe, taken, unsettable = copy.deepcopy(config), {}, []
    for field, (old, _) in changed.items():
        if given is None or field not in both or flag_setting(field, given):
            continue
        try:
            probe.update_from_flattened_dict({field: old})  # a value this version's field cannot hold is refused
            taken[field] = old
        except (TypeError, ValueError, KeyError):
            unsettable.append(field)
    guarded = MODEL_FIELDS + (DATA_FIELDS if evaluate else ())
    if refused := {k: v for k, v in changed.items() if matches(k, guarded) and k not in taken}:
        listing = ", ".join(f"{k}: trained with {old!r}, asked for {new!r}" for k, (old, new) in refused.items())
        if unsettable or given is None or not all(flag_setting(k, given) for k in refused):
            how = "" if unsettable else restoring_flags(refused, saved, requested)
        else:
            how = "drop " + " ".join(dict.fromkeys(f"--config.{flag_setting(k, given)}" for k in refused))
        raise ConfigError(
            f"{workdir} was trained with another {'model or data' if evaluate else 'model'} ({listing}); "
            + (f"{how} to use what it was trained with" if how else "its config.json is another version's")
            + f" (its whole config: {path})."
        )
    return taken


def flag_setting(field: str, given: Collection[str]) -> str | None:
    """The flag of `given` (main.py's --config.FIELD or --config.SECTION flags, without "--config.") that set the
    dotted `field`: the field ("data.num_train") or its section ("data"); None where none did."""
    parts = field.split(".")
    return next((g for g in (".".join(parts[:i]) for i in range(len(parts), 0, -1)) if g in given), None)


def take(config: ml_collections.ConfigDict, fields: Mapping[str, Any], workdir: str | pathlib.Path) -> None:
    """Sets `trained_fields`'s result in `config`, saying which fields it set."""
    if fields:
        config.update_from_flattened_dict(dict(fields))
        values = ", ".join(f"{k}={v!r}" for k, v in fields.items())
        logging.info("%s: as %s was trained (its config.json): %s.", config.mode, workdir, values)


def restoring_flags(
    changed: Mapping[str, tuple[Any, Any]], saved: Mapping[str, Any], requested: Mapping[str, Any]
) -> str:
    """What to add to and drop from a command line to get back the `saved` config's values of `changed` (`diff`'s
    result) in the `requested` one: "add --config.num_epochs=1 and drop --config.data.num_train"; "" where either
    lacks a field (a config.json of another version: no flag gives it back)."""
    flats = flatten(saved), flatten(requested)
    if any(k not in flat for flat in flats for k in changed):
        return ""
    add = [override(k, old) for k, (old, _) in changed.items() if old is not None]
    drop = [f"--config.{k}" for k, (old, _) in changed.items() if old is None]  # unset there
    return " and ".join(f"{verb} {' '.join(flags)}" for verb, flags in (("add", add), ("drop", drop)) if flags)


def override(field: str, value: Any) -> str:
    """The --config.FIELD=VALUE flag that sets the dotted path `field` to `value`, in the form ml_collections parses
    back (numbers joined by commas, other sequences as a tuple's repr), quoted for the shell."""
    if isinstance(value, (list, tuple)):
        numbers = value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        text = ",".join(str(v) for v in value) if numbers else repr(tuple(value))
    else:
        text = str(value)
    return shlex.quote(f"--config.{field}={text}")


def _what(config: Mapping[str, Any]) -> str:
    """What a config trains, in words ("cnn (seed_cnn)", "baseline (random_forest)", "compare")."""
    model = config.get("model")
    name = model.get("name") if isinstance(model, Mapping) else None
    return f"{config.get('kind')} ({name})" if name else str(config.get("kind"))


def save_or_check(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, write: bool = True, undoable: bool = True
) -> str | None:
    """Writes `workdir/config.json`, or checks the one there matches `config` (see the module docstring); returns
    the text of the config.json it replaced (other operational fields, or changes allowed on resume), else None.
    Without `write` (a process of a job other than the one that writes), only checks; `undoable` keeps the replaced
    text for the next start to put back if this one is killed before it accepts (`put_back_unless_accepted`)."""
    workdir = pathlib.Path(workdir)
    path = workdir / CONFIG_FILE
    requested = to_dict(config)
    if path.exists():
        saved = read_saved(path)
        changed = diff(saved, requested)
        if changed and kept_nothing(workdir):
            logging.info("%s was left by a start that kept nothing; replacing it.", path)
        elif changed and _what(saved) != _what(requested):
            what = f"a {_what(saved)} run, not a {_what(requested)} one"
            first = sorted(changed, key=lambda k: (k not in ("kind", "name", "model.name"), k))
            names = ", ".join(first[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
            raise ConfigError(f"{workdir} holds {what} (fields that differ: {names}); use a new --workdir.")
        elif changed:
            listing = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            unsafe = [k for k in changed if not matches(k, SAFE_TO_CHANGE)]
            if unsafe or not config.resume_with_changes:
                back = restoring_flags(changed, saved, requested)
                how = (
                    f"{back + ' to go on with it as it was, or ' if back else ''}use a new --workdir (fields {unsafe} "
                    "change what is computed)"
                    if unsafe
                    else "pass --config.resume_with_changes=True to continue with them, or use a new --workdir"
                )
                raise ConfigError(f"{workdir} holds a run with a different config ({listing}); {how}.")
            if "num_epochs" in changed and (why := shortened_below_its_checkpoint(workdir, config.num_epochs)):
                raise ConfigError(why)
        elif saved == requested:
            return None
    if not write:
        return None
    replaced = path.read_text(encoding="utf-8") if path.exists() else None
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        files.replace_undoably(path, json.dumps(requested, indent=2) + "\n", replaced if undoable else None)
    except OSError as e:
        raise ConfigError(f"cannot write {path} ({e.strerror}); choose a writable --workdir.") from e
    return replaced


@contextlib.contextmanager
def put_back_unless_accepted(workdir: str | pathlib.Path, replaced: str | None) -> Iterator[Callable[[], None]]:
    """Gives the start a callable to call once its checks have passed (the data read, the checkpoint restored); if
    the `with` raises before that, puts back the config.json text `replaced` (`save_or_check`'s): a start refused
    (missing or other data, a checkpoint past its last step) or stopped before then leaves the run's config.json
    as it was, its data.dir and num_epochs those the next start and `evaluate` compare and read. One killed before
    then (SIGKILL: no `except` runs) has it put back by the next start (`files.undo_killed_writes`)."""
    path, accepted = pathlib.Path(workdir) / CONFIG_FILE, []

    def accept() -> None:
        if not accepted:
            files.keep_replacement(path)
            accepted.append(True)

    try:
        yield accept
    except BaseException:
        if replaced is not None and not accepted:
            try:
                files.atomic_write_text(path, replaced)
            except OSError as e:  # the start's own error is the one to show
                logging.warning("%s could not be put back (%s): it holds the refused command's fields", path, e)
            else:
                with contextlib.suppress(OSError):  # a copy left over is put back by the next start: the same text
                    files.keep_replacement(path)
        raise
    accept()  # ended without an error: the config.json it wrote stands
