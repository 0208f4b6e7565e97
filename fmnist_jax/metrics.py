"""One way to score every model, and the `results.json` schema they all write.

`evaluate` takes plain NumPy (true labels, predicted labels, optional probabilities) and returns a plain
dict, so the CNN and the scikit-learn baselines are scored by the same code. Files are written atomically
(`files.atomic_write_bytes`): a crash never leaves half a results file.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import os
import pathlib
import platform
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from fmnist_jax import files
from fmnist_jax.data import CLASS_NAMES, Dataset
from fmnist_jax.errors import ResultsError

RESULTS_FILE = "results.json"
HISTORY_FILE = "history.jsonl"
PREDICTIONS_FILE = "predictions.npz"
SCORE_AGAIN = "score the run again to rewrite it (its command with --config.mode=evaluate)"  # for a damaged file
REQUIRED_KEYS = (
    "model",
    "config_name",
    "test_accuracy",
    "validation_accuracy",
    "per_class",
    "confusion_matrix",
    "num_params",
    "train_seconds",
    "predict_seconds",
    "samples_per_second",
    "seed",
    "versions",
)
MAX_SAVED_ERRORS = 64
SAMPLES_PER_CLASS = 8
_VERSIONED = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "scikit-learn", "numpy")


def fmt(value: float | None, spec: str = ".4f") -> str:
    """A score for a log line or a table: `value` formatted by `spec`, "n/a" when there is none."""
    return "n/a" if value is None else format(value, spec)


def scores_line(results: Mapping[str, Any]) -> str:
    """A run's scores for a log line: "test accuracy 0.9009 (validation 0.9012)"."""
    return f"test accuracy {fmt(results.get('test_accuracy'))} (validation {fmt(results.get('validation_accuracy'))})"


def evaluate(
    y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray | None = None, *, class_names: Sequence[str] = CLASS_NAMES
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support by class name, confusion matrix, and log-loss when
    `probs` (N, num_classes) is given: scikit-learn's definitions (tests/test_metrics.py), computed with NumPy so
    that a CNN run does not import scikit-learn and SciPy (a second of every start-up)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or not len(y_true):
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be 1-D, of equal length, not empty")
    k = len(class_names)
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.min() < 0 or y.max() >= k:  # np.bincount would count it in another class's cell
            raise ValueError(f"{name} holds labels outside 0..{k - 1} ({y.min()} to {y.max()})")
    confusion = np.bincount(y_true.astype(np.int64) * k + y_pred.astype(np.int64), minlength=k * k).reshape(k, k)
    support, predicted, hits = confusion.sum(1), confusion.sum(0), np.diag(confusion)
    precision, recall = _ratio(hits, predicted), _ratio(hits, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    scores = {
        "accuracy": float(hits.sum() / len(y_true)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "macro_f1": float(np.mean(f1)),
        "confusion_matrix": confusion.tolist(),
        "log_loss": None,
    }
    if probs is not None:
        probs = np.asarray(probs, np.float64)
        if probs.shape != (len(y_true), k):
            raise ValueError(f"probs has shape {probs.shape}, expected {(len(y_true), k)}")
        eps = np.finfo(np.float64).eps  # scikit-learn's clip for float64 (a forest gives exact zeros)
        probs = np.clip(probs, eps, 1 - eps)
        scores["log_loss"] = float(-np.mean(np.log(probs[np.arange(len(y_true)), y_true.astype(np.int64)])))
    return scores


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (a class never predicted or never present)."""
    numerator, denominator = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def versions(names: Sequence[str] = _VERSIONED) -> dict[str, str]:
    """Versions of Python and the libraries that produced a result (`names`, those installed)."""
    found = {"python": platform.python_version()}
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def make_results(
    *,
    model: str,
    config_name: str,
    scores: Mapping[str, Any],
    validation_accuracy: float | None,
    num_params: int | None,
    train_seconds: float | None,
    predict_seconds: float,
    seed: int,
    dataset: Dataset,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The results.json record: one schema for every model (`scores` of `dataset`'s test split)."""
    return {
        "model": model,
        "config_name": config_name,
        "test_accuracy": scores["accuracy"],
        "validation_accuracy": validation_accuracy,
        "per_class": scores["per_class"],
        "macro_f1": scores["macro_f1"],
        "confusion_matrix": scores["confusion_matrix"],
        "log_loss": scores["log_loss"],
        "num_params": num_params,
        "train_seconds": train_seconds,
        "predict_seconds": predict_seconds,
        "samples_per_second": len(dataset.test) / predict_seconds if predict_seconds > 0 else None,
        "seed": seed,
        "num_train_images": len(dataset.train),  # what it trained on (a baseline fitted on validation too: more)
        "versions": versions(),
        "dataset_checksums": dict(dataset.checksums),
        "dataset_released": dataset.released,
        **dict(extra or {}),
    }


def save_results(workdir: str | os.PathLike, results: Mapping[str, Any]) -> pathlib.Path:
    """Writes `workdir/results.json` atomically; returns its path."""
    missing = [k for k in REQUIRED_KEYS if k not in results]
    if missing:
        raise ResultsError(f"results lack the fields {missing}")
    path = pathlib.Path(workdir) / RESULTS_FILE
    files.atomic_write_text(path, json.dumps(results, indent=2, sort_keys=False) + "\n")
    return path


def forget_scores(workdir: str | os.PathLike) -> None:
    """Removes `workdir`'s results.json (first: it marks a run finished) and predictions.npz: the scores of a run
    that goes on training (more epochs than it finished with)."""
    for name in (RESULTS_FILE, PREDICTIONS_FILE):
        (pathlib.Path(workdir) / name).unlink(missing_ok=True)


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a results.json (or the one in a workdir) and checks it follows the schema."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ResultsError(f"{path} does not exist: has this run finished?") from e
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path} is not valid JSON ({e}); {SCORE_AGAIN}.") from e
    missing = [k for k in REQUIRED_KEYS if k not in results]
    if missing:
        raise ResultsError(f"{path} lacks the fields {missing}; it was not written by this version.")
    return results


def read_history(workdir: str | pathlib.Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run, in order."""
    path = pathlib.Path(workdir) / HISTORY_FILE
    if not path.exists():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i < len(lines) - 1:
                raise ResultsError(
                    f"{path}: line {i + 1} is not valid JSON ({e}); fix or delete that line (each line is one epoch)."
                ) from e
            logging.warning("%s: ignoring a torn last line (the process was killed while writing it)", path)
    return records


def write_history(workdir: str | pathlib.Path, records: list[dict[str, Any]]) -> None:
    """Rewrites history.jsonl whole and atomically: a crash or a full disk never leaves a torn line."""
    text = "".join(json.dumps(r) + "\n" for r in records)
    files.atomic_write_text(pathlib.Path(workdir) / HISTORY_FILE, text)


def append_history(workdir: str | pathlib.Path, record: dict[str, Any]) -> None:
    """Adds one epoch's record to history.jsonl."""
    write_history(workdir, [*read_history(workdir), record])


def truncate_history(workdir: str | pathlib.Path, num_epochs: int) -> None:
    """Keeps the first `num_epochs` records, the lineage of a restored state; later ones are replayed."""
    records = read_history(workdir)
    if len(records) != num_epochs or any(r["epoch"] > num_epochs for r in records):
        write_history(workdir, [r for r in records if r["epoch"] <= num_epochs])


def save_predictions(
    workdir: str | os.PathLike,
    *,
    labels: np.ndarray,
    preds: np.ndarray,
    probs: np.ndarray | None = None,
    images: np.ndarray | None = None,
    max_errors: int = MAX_SAVED_ERRORS,
    samples_per_class: int = SAMPLES_PER_CLASS,
) -> pathlib.Path:
    """Test-set labels, predicted classes and (where the model gives them) class probabilities, for the
    report's error analysis; with `images`, also the first misclassified images and a few images per class,
    so the report needs nothing but the workdir. Written atomically."""
    path = pathlib.Path(workdir) / PREDICTIONS_FILE
    labels, preds = np.asarray(labels), np.asarray(preds)
    arrays = {"labels": labels, "preds": preds}
    if probs is not None:
        arrays["probs"] = np.asarray(probs, np.float32)
    if images is not None:
        errors = np.flatnonzero(labels != preds)[:max_errors]
        samples = np.concatenate([np.flatnonzero(labels == c)[:samples_per_class] for c in np.unique(labels)])
        arrays.update(
            error_indices=errors,
            error_images=np.asarray(images)[errors],
            sample_indices=samples,
            sample_images=np.asarray(images)[samples],
        )
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    files.atomic_write_bytes(path, buffer.getvalue())
    return path


def load_predictions(workdir: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays that `save_predictions` wrote: labels, preds and, if saved, probs."""
    path = pathlib.Path(workdir) / PREDICTIONS_FILE
    try:
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ResultsError(f"{path} cannot be read ({type(e).__name__}: {e}); {SCORE_AGAIN}.") from e
