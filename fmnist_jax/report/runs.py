"""Finished workdirs as the report sees them: each run as a `Member`, runs of one config grouped into a `Model`.

Everything here reads what a run left behind (results.json, history.jsonl, predictions.npz, config.json; for a
folder that holds a report, its report.json); the tables, the sentences and the plots all start from these objects.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import re
import runpy
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from fmnist_jax import checksums, config_lib, data, metrics, stats
from fmnist_jax.errors import ResultsError

# Test accuracies the original study published, by model name.
PUBLISHED = {"seed_cnn": 0.8997, "random_forest": 0.879, "linear_svm": 0.76}
PUBLISHED_CONFIGS = ("cnn", "random_forest", "linear_svm")  # the configs that are the study's models
CURVE_KEYS = ("epoch", "train_loss", "train_accuracy", "validation_loss", "validation_accuracy")  # what is plotted
MODEL_TITLES = {
    "seed_cnn": "CNN (Flax)",
    "random_forest": "Random forest",
    "linear_svm": "Linear SVM",
    "vgg_bn": "VGG-BN CNN (beyond the study)",
}
CONFIG_TITLES = {
    "random_forest_search": "Random forest (searched)",
    "linear_svm_search": "Linear SVM (searched)",
    "speedrun": "Speedrun CNN (beyond the study)",
}


@dataclasses.dataclass
class Member:
    """One finished run, as the report sees it."""

    label: str
    workdir: pathlib.Path
    results: dict[str, Any]
    history: list[dict[str, Any]]
    predictions: dict[str, np.ndarray]
    title: str = ""
    settings: dict[str, Any] | None = None  # what the run computed (`read_settings`); None where unknown


def load_member(workdir: str | pathlib.Path) -> Member:
    """Reads a finished workdir (results.json is required; history and predictions are optional)."""
    workdir = pathlib.Path(workdir)
    if workdir.is_file():
        raise ResultsError(f"{workdir} is a file, not a run's folder: name the folder that holds its results.json.")
    if not workdir.exists():
        raise ResultsError(f"{workdir} does not exist: name a finished run's folder (the --workdir it trained in).")
    if not (workdir / metrics.RESULTS_FILE).exists() and (steps := config_lib.checkpoint_steps(workdir)):
        raise ResultsError(
            f"{workdir} holds an unfinished run (its newest checkpoint is step {steps[-1]}): rerun its command to "
            "finish it, or score that checkpoint with --config.mode=evaluate and name its evaluate_step_N folder."
        )
    if not (workdir / metrics.RESULTS_FILE).exists() and (why := _unfinished(workdir)):
        raise ResultsError(f"{workdir} holds {why}")
    results = metrics.load_results(workdir)
    history = metrics.read_history(workdir)
    if missing := sorted({k for record in history for k in CURVE_KEYS if k not in record}):
        raise ResultsError(
            f"{workdir / metrics.HISTORY_FILE} has epochs without {missing}, which the report plots; it was not "
            "written by this version: delete it to report the run without its curves."
        )
    predictions = metrics.load_predictions(workdir) if (workdir / metrics.PREDICTIONS_FILE).exists() else {}
    title = CONFIG_TITLES.get(results["config_name"]) or MODEL_TITLES.get(results["model"], results["model"])
    label, step = results.get("config_name") or workdir.name, results.get("checkpoint_step")
    if step is not None:  # an earlier checkpoint scored apart (evaluate_step_N/): never a finished run's seed
        label, title = f"{label}_step{step}", f"{title} (checkpoint at step {step})"
    settings = read_settings(workdir, step is not None)
    if settings is not None and results.get("scored_with"):  # scored with settings other than its run's
        settings = {**settings, **results["scored_with"]}
    return Member(label, workdir, results, history, predictions, title, settings)


def _unfinished(workdir: pathlib.Path) -> str | None:
    """What a folder without results.json holds, where a run began there, with how to finish it; None if none did."""
    if (workdir / config_lib.MODEL_FILE).exists():
        return "a fitted baseline not yet scored: rerun its command to score it (the model is not fitted again)."
    saved = config_lib.saved_or_none(workdir)
    if saved is None:
        return None
    if saved.get("kind") == "compare":
        return (
            "a comparison that has not finished (no report.json): rerun its command to finish it, or name its "
            "members' finished runs (<member>/seed_<seed>)."
        )
    return "a run that has not finished (its config.json, no results.json): rerun its command to finish it."


@dataclasses.dataclass
class Model:
    """One model of the report: its runs, one per seed, in seed order."""

    label: str
    title: str
    runs: list[Member]

    @property
    def seeds(self) -> list[int]:
        return [r.results["seed"] for r in self.runs]

    def values(self, key: str) -> list[float]:
        return [r.results[key] for r in self.runs]


def folder_label(run: Member) -> str:
    """A run's folder name for titles and file names; a comparison's seed_<s> folders with their member's."""
    w = run.workdir
    return f"{w.parent.name}_{w.name}" if w.name.startswith("seed_") else w.name


SHOWN_FIELDS = 3  # at most this many differing fields in the title of a model that is kept apart


# Fields of config.json that change how a run was driven, not what it computed (resuming may change them).
NOT_SETTINGS = ("seed", "checkpoint.")
CONFIGS_DIR = pathlib.Path(__file__).resolve().parents[2] / "configs"  # a checkout's configs/*.py
SHOWN_DEFAULTS = 5  # at most this many fields that differ from the config file's in a run's line


def _computed(saved: dict[str, Any]) -> dict[str, Any]:
    """A config's fields that decide what a run computes, flat (`diff` leaves the operational ones out)."""
    return {k: v for k, v in config_lib.flatten(saved).items() if not config_lib.matches(k, NOT_SETTINGS)}


def read_settings(workdir: pathlib.Path, scored_apart: bool) -> dict[str, Any] | None:
    """What a run computed, from its config.json: every field but the seed, the checkpointing and the operational
    ones (speed, output, where the data lies); None for a folder without a readable config.json. An earlier
    checkpoint scored apart (`scored_apart`, an evaluate_step_N/ folder) is the run's around it."""
    saved = config_lib.saved_or_none(workdir.parent if scored_apart else workdir)
    return None if saved is None else _computed(saved)


@functools.cache
def _config_file_settings(config_name: str) -> dict[str, Any] | None:
    """What configs/<config_name>.py computes as it is (None where there is no such file, or it fails)."""
    path = CONFIGS_DIR / f"{config_name}.py"
    if not re.fullmatch(r"\w+", config_name) or not path.is_file():  # a name, never a path to run
        return None
    loaded = sys.modules.get("configs")
    if loaded is not None and [pathlib.Path(p).resolve() for p in getattr(loaded, "__path__", [])] != [CONFIGS_DIR]:
        return None  # another module named configs: its files are not these
    added = str(CONFIGS_DIR.parent) not in sys.path  # its `from configs import common`
    if added:
        sys.path.insert(0, str(CONFIGS_DIR.parent))
    try:
        return _computed(config_lib.to_dict(runpy.run_path(str(path), run_name="config_file")["get_config"]()))
    except Exception:  # a config file of another version: nothing to say
        return None
    finally:
        if added:
            sys.path.remove(str(CONFIGS_DIR.parent))


def changed_from_config_file(member: Member) -> str:
    """The fields in which a run's settings differ from its config file's ("num_epochs=3, ..."; "" where none or
    unknown): a quick or hand-changed run is said to be one beside its scores."""
    own, file = member.settings, _config_file_settings(member.results.get("config_name") or "")
    if own is None or file is None:
        return ""
    changed = config_lib.diff(file, own)
    shown = [_field(own, k) for k in list(changed)[:SHOWN_DEFAULTS]]
    return ", ".join(shown) + (", …" if len(changed) > SHOWN_DEFAULTS else "")


def _by_settings(runs: list[Member]) -> list[tuple[list[Member], str]]:
    """Runs of one label split by their settings: each share of the runs with what sets it apart for its title
    ("" where all agree). Runs of one config trained with other settings (more trees, fewer images) are other
    models: averaging them as seeds of one would mix two experiments. Runs whose settings are unknown (no
    config.json) are a share of their own beside known ones."""
    shares: list[tuple[dict[str, Any], list[Member]]] = []
    unknown = []
    for run in runs:
        own = run.settings
        if own is None:
            unknown.append(run)
            continue
        same = next((share for key, share in shares if not config_lib.diff(key, own)), None)
        if same is None:
            shares.append((own, [run]))
        else:
            same.append(run)
    if len(shares) + bool(unknown) <= 1:
        return [(runs, "")]
    differing = sorted({k for a, _ in shares for b, _ in shares for k in config_lib.diff(a, b)})
    shown = differing[:SHOWN_FIELDS]
    more = ", …" if len(differing) > SHOWN_FIELDS else ""
    apart = [(share, ", ".join(_field(key, k) for k in shown) + more) for key, share in shares]
    return apart + ([(unknown, "settings unknown: no config.json")] if unknown else [])


def _field(settings: dict[str, Any], field: str) -> str:
    return f"{field}={settings[field]}" if field in settings else f"{field} absent"


def released(results: dict[str, Any]) -> bool | None:
    """results.json's `dataset_released`; in results that predate it, read off raw IDX files' checksums (of their
    content, as now), None for gzip files' (of the files as stored) and TFDS's."""
    if "dataset_released" in results:
        return results["dataset_released"]
    sums = checksums.by_content(results.get("dataset_checksums"))
    return sums == data.RELEASED_SHA256 if sums.keys() == data.RELEASED_SHA256.keys() else None


def _data_name(results: dict[str, Any]) -> str:
    """The data a run read, as a model's title names it: "the released files", or "files " (TFDS's: "TFDS's arrays ")
    and the start of the SHA-256 of their checksums (runs of one data set share it), or "unrecorded" (no checksums,
    or only an older record's of gzip files as stored)."""
    if released(results):
        return "the released files"
    sums = checksums.by_content(results.get("dataset_checksums"))
    if not sums:
        return "unrecorded"
    what = "TFDS's arrays" if checksums.source(sums) == "tfds" else "files"
    return f"{what} {hashlib.sha256(json.dumps(sums, sort_keys=True).encode()).hexdigest()[:8]}"


def _source(run: Member) -> str | None:
    return checksums.source(run.results.get("dataset_checksums"))


def _by_data(runs: list[Member]) -> list[tuple[list[Member], str]]:
    """Runs of one label split by the data they read (their files' checksums): each share with what sets it apart
    ("" where all read the same; the released files first, then by name, whatever order the runs came in). Runs of
    other data are other experiments, never seeds of one model; runs whose data are unrecorded are taken for the
    others' where those read one data set from the same source (IDX files or TFDS)."""
    shares: dict[str, list[Member]] = {}
    for run in runs:
        shares.setdefault(_data_name(run.results), []).append(run)
    unsure = shares.get("unrecorded", [])
    sources = {_source(r) for name, share in shares.items() if name != "unrecorded" for r in share}
    if len(shares) == 2 and unsure and {_source(r) for r in unsure} <= sources | {None}:
        return [(runs, "")]  # runs that cannot tell join the one data set the others read, from the same source
    order = sorted(shares, key=lambda name: (name != "the released files", name))
    return [(runs, "")] if len(shares) == 1 else [(shares[name], f"data: {name}") for name in order]


def _group(members: Sequence[Member]) -> list[Model]:
    """Runs of one label, one data set and one setting with distinct seeds are one model; runs that repeat a seed are
    one model each; runs of one label on other data or with other settings are other models (titled with the data
    and the fields that differ)."""
    groups: dict[str, list[Member]] = {}
    for member in members:
        groups.setdefault(member.label, []).append(member)
    models = []
    for label, runs in groups.items():
        by_data = _by_data(runs)
        shares = [
            (share, f"{label}_data{j + 1}" if on else label, on, apart)  # label, then _dataN, then _N
            for j, (same_data, on) in enumerate(by_data)
            for share, apart in _by_settings(same_data)
        ]
        for i, (share, stem, on, apart) in enumerate(shares):
            notes = ", ".join(note for note in (on, apart) if note)
            title = f"{share[0].title} ({notes})" if notes else share[0].title
            name = f"{stem}_{i + 1}" if apart else stem
            seeds = [r.results["seed"] for r in share]
            if len(set(seeds)) == len(seeds):
                models.append(Model(name, title, sorted(share, key=lambda r: r.results["seed"])))
            else:
                models += [Model(f"{name}_{folder_label(r)}", f"{title} ({folder_label(r)})", [r]) for r in share]
    return models


def _set_apart(models: list[Model]) -> list[Model]:
    """Makes labels (file names, keys) and titles distinct, e.g. for folders of one name under two parents."""
    # The second "a" becomes a_2, or a_3 where a_2 is another model's own label, which stays; compared case-folded,
    # as the figures' file names are on macOS and Windows.
    reserved, taken = {m.label.casefold() for m in models}, set()
    for m in models:
        label, n = m.label, 1
        while label.casefold() in taken or (n > 1 and label.casefold() in reserved):
            n += 1
            label = f"{m.label}_{n}"
        taken.add(label.casefold())
        m.label = label
    titles = [m.title for m in models]
    for m in models:
        if titles.count(m.title) > 1:
            m.title = f"{m.title} ({m.label})"
    return models


def load_models(workdirs: Sequence[str | pathlib.Path]) -> list[Model]:
    """Every workdir's run, grouped into models: runs of one config and its settings with distinct seeds are one
    model's seeds. Runs of one config with other settings (config.json) are other models, titled with the fields
    that differ; runs of one config and seed in several workdirs stay apart, with the folder name in the title. A
    folder named twice is an error (the run would be compared with itself)."""
    workdirs = [run for w in workdirs for run in report_runs(pathlib.Path(w))]
    seen: dict[pathlib.Path, str | pathlib.Path] = {}
    for w in workdirs:
        if (resolved := pathlib.Path(w).resolve()) in seen:
            raise ResultsError(f"{w} is named twice (also as {seen[resolved]}): name each run's folder once.")
        seen[resolved] = w
    return _set_apart(_group([load_member(w) for w in workdirs]))


def report_runs(folder: pathlib.Path) -> list[pathlib.Path]:
    """The runs a report's folder (a comparison's workdir, or a report's --out) reported, from its report.json, where
    `folder` holds no run itself; else `folder`. A run it names that is gone is an error naming it."""
    listing = folder / "report.json"
    if (folder / metrics.RESULTS_FILE).exists() or not listing.is_file():
        return [folder]
    try:
        record = json.loads(listing.read_text(encoding="utf-8"))
        runs = [
            _located(run["workdir"], record, folder) for m in record["models"].values() for run in m["seeds"].values()
        ]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ResultsError(f"{listing} is not a report's record ({e!r}): name the runs to report instead.") from e
    if gone := [str(run) for run in runs if not (run / metrics.RESULTS_FILE).exists()]:
        raise ResultsError(f"{folder} holds a report; its runs {', '.join(gone)} have no results.json: name the runs.")
    return runs


def _located(run: str, record: dict[str, Any], folder: pathlib.Path) -> pathlib.Path:
    """A run's folder as report.json names it: as written (absolute, or from here), else from the folder the report
    was built from, else where it lies from the report's folder as it lay then (the two moved together)."""
    path, base, out = pathlib.Path(run), record.get("built_from"), record.get("out")
    candidates = [path]
    if base:
        candidates.append(pathlib.Path(base) / path)
        if out:
            candidates.append(folder / os.path.relpath(pathlib.Path(base) / path, pathlib.Path(base) / out))
    return next((c for c in candidates if (c / metrics.RESULTS_FILE).exists()), path)


def published_accuracy(model: Model) -> float | None:
    """The test accuracy the original study published for this model, when it is one of the study's configs."""
    first = model.runs[0].results
    return PUBLISHED.get(first["model"]) if first.get("config_name") in PUBLISHED_CONFIGS else None


def correctness(member: Member) -> np.ndarray | None:
    """Per test image: did this run classify it right (from predictions.npz; None without it)."""
    if "preds" not in member.predictions:
        return None
    return member.predictions["preds"] == member.predictions["labels"]


def accuracy_interval(member: Member) -> tuple[float, float] | None:
    """The exact interval of a run's test accuracy: from its predictions, or without them from results.json's
    confusion matrix (its diagonal the images classified right); None without either."""
    if (correct := correctness(member)) is not None:
        return stats.accuracy_interval(correct)
    if not (confusion := member.results.get("confusion_matrix")):
        return None
    confusion = np.asarray(confusion)
    return stats.count_interval(int(np.trace(confusion)), int(confusion.sum()))


def confusion_rates(confusion: Sequence[Sequence[int]]) -> np.ndarray:
    """A confusion matrix as shares of each true class (a row without images stays zero)."""
    cm = np.asarray(confusion, np.float64)
    return cm / np.maximum(cm.sum(1, keepdims=True), 1)
