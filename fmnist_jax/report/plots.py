"""Every figure of the report, one function each, written as PNG to the path it is given (matplotlib, Agg).

matplotlib is imported on the first figure, so loading the report's runs and tables never needs it.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np

from fmnist_jax.data import CLASS_NAMES
from fmnist_jax.report.runs import Member, Model, confusion_rates
from fmnist_jax.report.tables import settings

ERRORS_SHOWN = 24


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: pathlib.Path) -> pathlib.Path:
    """Writes the figure and frees it."""
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _percent(pct: float) -> str:
    """A confusion cell's percentage: whole points, one decimal below 1%."""
    return f"{pct:.0f}" if pct >= 1 else f"{pct:.1f}"


def plot_confusion(member: Member, path: pathlib.Path) -> pathlib.Path:
    """A run's confusion matrix as shares of each true class, with the percentage in every non-empty cell."""
    plt = _pyplot()
    cm = np.asarray(member.results["confusion_matrix"], np.float64)
    rates = confusion_rates(cm)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(rates.shape[0]):
        for j in range(rates.shape[1]):
            if cm[i, j]:
                color = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, _percent(100 * rates[i, j]), ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{member.title}: confusion matrix (% of each true class, test set)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return _save(fig, path)


def plot_curves(model: Model, path: pathlib.Path) -> pathlib.Path:
    """Train and validation loss and accuracy per epoch, one line per seed; the train figures are those of the
    training steps (with their dropout and augmentation, where the recipe has them)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run in model.runs:
        seed = f" (seed {run.results['seed']})" if len(model.runs) > 1 else ""
        epochs = [r["epoch"] for r in run.history]
        for ax, key in ((axes[0], "loss"), (axes[1], "accuracy")):
            ax.plot(epochs, [r[f"train_{key}"] for r in run.history], "o-", ms=3, label=f"train (as trained){seed}")
            if any(r[f"validation_{key}"] is not None for r in run.history):  # none when trained on all 60k
                ax.plot(epochs, [r[f"validation_{key}"] for r in run.history], "s-", ms=3, label=f"validation{seed}")
    for ax, label in ((axes[0], "cross-entropy loss"), (axes[1], "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7 if len(model.runs) > 1 else 10)
    axes[0].set_title(f"{model.title}: loss per epoch")
    axes[1].set_title(f"{model.title}: accuracy per epoch")
    return _save(fig, path)


def plot_search(member: Member, path: pathlib.Path) -> pathlib.Path:
    """Validation accuracy of every searched setting against its fit time."""
    plt = _pyplot()
    grid = [g for g in member.results["search"]["grid"] if g["validation_accuracy"] is not None]  # not failed fits
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.scatter([g["fit_seconds"] for g in grid], [g["validation_accuracy"] for g in grid])
    for g in grid:
        ax.annotate(
            ", ".join(str(v) for v in g["params"].values()),
            (g["fit_seconds"], g["validation_accuracy"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_xlabel("fit seconds (log scale)")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.set_title(f"{member.title}: search (best: {settings(member.results['search']['best_params'])})")
    return _save(fig, path)


def _image_grid(
    images: np.ndarray,
    titles: Sequence[str],
    ncols: int,
    suptitle: str,
    path: pathlib.Path,
    row_labels: Sequence[str] | None = None,
) -> pathlib.Path:
    """Images in a grid of `ncols` columns, each framed with its title above it, optionally a label at the left of
    each row. One picture of all the tiles in one set of axes: a hundred small axes took three times as long."""
    plt = _pyplot()
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    n, h, w = images.shape
    nrows = max(1, -(-n // ncols))
    inch = 1.3 / w  # inches per image pixel: each image 1.3 inches wide in a 1.6-inch column
    pitch_x, pitch_y = round(1.6 / inch), h + round((0.55 if any(titles) else 0.15) / inch)
    top = pitch_y - h - round(0.08 / inch)  # rows of the tile above its image: the title's space
    canvas = np.full((nrows * pitch_y, ncols * pitch_x), np.nan)
    corners = []
    for k, image in enumerate(images):
        y, x = divmod(k, ncols)
        y, x = y * pitch_y + top, x * pitch_x + (pitch_x - w) // 2
        canvas[y : y + h, x : x + w] = image
        corners.append((x, y))
    fig = plt.figure(figsize=(ncols * pitch_x * inch, nrows * pitch_y * inch))
    ax = fig.add_axes((0, 0, 1, 1))
    gray = plt.get_cmap("gray_r").with_extremes(bad="white")
    ax.imshow(np.ma.masked_invalid(canvas), cmap=gray, vmin=0, vmax=255, interpolation="nearest")
    frames = [Rectangle((x - 0.5, y - 0.5), w, h) for x, y in corners]
    ax.add_collection(PatchCollection(frames, facecolor="none", edgecolor="black", linewidth=0.8))
    for (x, y), title in zip(corners, titles, strict=False):
        if title:
            ax.text(x + w / 2, y - 1.5, title, ha="center", va="bottom", fontsize=7.5)
    ax.set_xticks([])
    ax.set_yticks([r * pitch_y + top + h / 2 for r in range(len(row_labels or ()))], row_labels or (), fontsize=9)
    ax.tick_params(left=False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(suptitle)
    return _save(fig, path)


def plot_errors(member: Member, path: pathlib.Path) -> pathlib.Path | None:
    """The first misclassified test images with true and predicted class (None when the run saved none)."""
    p = member.predictions
    if "error_images" not in p or not len(p["error_indices"]):
        return None
    idx, images = p["error_indices"][:ERRORS_SHOWN], p["error_images"][:ERRORS_SHOWN]
    titles = []
    for i in idx:
        pred = int(p["preds"][i])
        conf = f" ({p['probs'][i, pred]:.0%})" if "probs" in p else ""
        titles.append(f"true: {CLASS_NAMES[int(p['labels'][i])]}\npred: {CLASS_NAMES[pred]}{conf}")
    note = "" if "probs" in p else " (this model gives no probabilities)"
    return _image_grid(
        images, titles, 8, f"{member.title}: misclassified test images (the first {len(idx)}){note}", path
    )


def plot_samples(member: Member, path: pathlib.Path) -> pathlib.Path | None:
    """The run's saved sample test images, one row per class (None when it saved none)."""
    p = member.predictions
    if "sample_images" not in p:
        return None
    labels = p["labels"][p["sample_indices"]]
    per_class = int(np.max(np.bincount(labels)))
    images, row_labels = [], []
    for c in range(len(CLASS_NAMES)):
        found = list(p["sample_images"][labels == c][:per_class])
        images += found + [np.zeros((28, 28), np.uint8)] * (per_class - len(found))
        row_labels.append(CLASS_NAMES[c])
    return _image_grid(np.stack(images), [""] * len(images), per_class, "Test images by class", path, row_labels)


def plot_f1(models: Sequence[Model], path: pathlib.Path) -> pathlib.Path:
    """F1 per class and model: the mean over seeds, with the standard deviation as an error bar."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / len(models)
    x = np.arange(len(CLASS_NAMES))
    for k, m in enumerate(models):
        f1 = np.array([[run.results["per_class"][c]["f1"] for c in CLASS_NAMES] for run in m.runs])
        ax.bar(
            x + (k - (len(models) - 1) / 2) * width,
            f1.mean(0),
            width,
            label=m.title,
            yerr=f1.std(0, ddof=1) if len(f1) > 1 else None,
            capsize=2,
        )
    ax.set_xticks(x, CLASS_NAMES, rotation=30, ha="right")
    ax.set_ylabel("F1 (test set)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=len(models), frameon=False)
    ax.set_title("F1 per class" + (" (mean ± std over seeds)" if any(len(m.runs) > 1 for m in models) else ""))
    return _save(fig, path)
