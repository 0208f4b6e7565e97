"""The comparison report: tables and plots from finished workdirs, as Markdown and self-contained HTML.

It reads only what runs left behind (results.json, history.jsonl, predictions.npz) and never trains.

    python -m fmnist_jax.report runs/cnn runs/rf runs/svm --out runs/report
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import html
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from fmnist_jax import files, metrics, stats
from fmnist_jax.data import CLASS_NAMES
from fmnist_jax.errors import UserError

# Test accuracies the original study published, by model name.
PUBLISHED = {"seed_cnn": 0.8997, "random_forest": 0.879, "linear_svm": 0.76}
PUBLISHED_CONFIGS = ("cnn", "random_forest", "linear_svm")  # the configs that are the study's models
MODEL_TITLES = {
    "seed_cnn": "CNN (Flax)",
    "random_forest": "Random forest",
    "linear_svm": "Linear SVM",
    "vgg_bn": "VGG-BN CNN (beyond the study)",
}
CONFIG_TITLES = {"random_forest_search": "Random forest (searched)", "linear_svm_search": "Linear SVM (searched)"}
REPORT_JSON = "report.json"
ERRORS_SHOWN = 24


@dataclasses.dataclass
class Member:
    """One finished run, as the report sees it."""

    label: str
    workdir: pathlib.Path
    results: dict[str, Any]
    history: list[dict[str, Any]]
    predictions: dict[str, np.ndarray]
    title: str = ""


def load_member(workdir: str | pathlib.Path) -> Member:
    """Reads a finished workdir (results.json is required; history and predictions are optional)."""
    workdir = pathlib.Path(workdir)
    results = metrics.load_results(workdir)
    history = metrics.read_history(workdir)
    predictions = metrics.load_predictions(workdir) if (workdir / metrics.PREDICTIONS_FILE).exists() else {}
    return Member(
        label=results.get("config_name") or workdir.name,
        workdir=workdir,
        results=results,
        history=history,
        predictions=predictions,
        title=CONFIG_TITLES.get(results["config_name"]) or MODEL_TITLES.get(results["model"], results["model"]),
    )


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


def _folder(run: Member) -> str:
    """A run's folder name for titles and file names; a comparison's seed_<s> folders with their member's."""
    w = run.workdir
    return f"{w.parent.name}_{w.name}" if w.name.startswith("seed_") else w.name


def load_models(workdirs: Sequence[str | pathlib.Path]) -> list[Model]:
    """Every workdir's run, grouped into models: runs of one config with distinct seeds are one model's seeds.
    Runs of one config and seed in several workdirs (a study setting beside the default, say) stay apart, with
    the folder name in title and file names."""
    groups: dict[str, list[Member]] = {}
    for w in workdirs:
        member = load_member(w)
        groups.setdefault(member.label, []).append(member)
    models = []
    for label, runs in groups.items():
        seeds = [r.results["seed"] for r in runs]
        if len(set(seeds)) == len(seeds):
            models.append(Model(label, runs[0].title, sorted(runs, key=lambda r: r.results["seed"])))
        else:
            models += [Model(f"{label}_{_folder(r)}", f"{r.title} ({_folder(r)})", [r]) for r in runs]
    counts: dict[str, int] = {}
    for m in models:  # folders of the same names under different parents: keep labels (file names, keys) apart
        counts[m.label] = counts.get(m.label, 0) + 1
        if counts[m.label] > 1:
            m.label = f"{m.label}_{counts[m.label]}"
    titles = [m.title for m in models]
    for m in models:
        if titles.count(m.title) > 1:
            m.title = f"{m.title} ({m.label})"
    return models


# --------------------------------------------------------------------------------------------- numbers


def confused_pairs(
    confusion: Sequence[Sequence[int]], class_names: Sequence[str] = CLASS_NAMES, top: int = 5
) -> list[tuple[str, str, float]]:
    """The `top` largest off-diagonal rates: (true class, predicted class, share of the true class)."""
    cm = np.asarray(confusion, np.float64)
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    np.fill_diagonal(rates, -1)
    order = np.argsort(rates, axis=None)[::-1][:top]
    return [
        (class_names[i], class_names[j], float(rates[i, j]))
        for i, j in zip(*np.unravel_index(order, rates.shape), strict=True)
        if rates[i, j] > 0
    ]


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    if s < 0.1:
        return f"{1000 * s:.0f} ms"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def _mean_std(values: Sequence[float], spec: str = ".4f") -> str:
    """One value as it is; several as mean ± sample standard deviation."""
    if len(values) == 1:
        return format(values[0], spec)
    summary = stats.seed_summary(values)
    return f"{format(summary['mean'], spec)} ± {format(summary['std'], spec)}"


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def correctness(member: Member) -> np.ndarray | None:
    """Per test image: did this run classify it right (from predictions.npz; None without it)."""
    if "preds" not in member.predictions:
        return None
    return member.predictions["preds"] == member.predictions["labels"]


def accuracy_interval(member: Member) -> tuple[float, float] | None:
    correct = correctness(member)
    return None if correct is None else stats.accuracy_interval(correct)


def _interval(member: Member) -> str:
    ci = accuracy_interval(member)
    return "n/a" if ci is None else f"{ci[0]:.4f}–{ci[1]:.4f}"


def summary_rows(models: Sequence[Model]) -> list[list[str]]:
    rows = []
    for m in models:
        r = m.runs[0].results
        published = PUBLISHED.get(r["model"]) if m.label in PUBLISHED_CONFIGS else None
        checksum = (
            ", ".join(
                f"{v[:12]}"
                for k, v in sorted(r.get("dataset_checksums", {}).items())
                if "images" in k or k.startswith("tfds")
            )
            or "n/a"
        )
        ci = _interval(m.runs[0]) if len(m.runs) == 1 else "per seed below"
        params = r["num_params"]
        rows.append(
            [
                m.title,
                _mean_std(m.values("test_accuracy")),
                ci,
                _fmt(published),
                _fmt(_mean(m.values("validation_accuracy"))),
                "n/a"
                if params is None
                else f"{params:,}" + ("" if len(set(m.values("num_params"))) == 1 else f" (seed {m.seeds[0]})"),
                _fmt_seconds(_mean(m.values("train_seconds"))),
                _fmt_seconds(_mean(m.values("predict_seconds"))),
                _fmt(_mean(m.values("samples_per_second")), ",.0f"),
                str(len(m.runs)),
                checksum,
            ]
        )
    return rows


SUMMARY_HEADER = [
    "model",
    "test accuracy",
    "95% CI (exact binomial)",
    "study",
    "validation accuracy",
    "parameters",
    "train time",
    "predict time",
    "images/s (predict)",
    "seeds",
    "data SHA-256 (images)",
]


def seed_rows(models: Sequence[Model]) -> list[list[str]]:
    """One row per run of a model with several seeds: its accuracy, exact interval and validation accuracy."""
    rows = []
    for m in models:
        if len(m.runs) < 2:
            continue
        for run in m.runs:
            r = run.results
            rows.append(
                [
                    m.title,
                    str(r["seed"]),
                    f"{r['test_accuracy']:.4f}",
                    _interval(run),
                    _fmt(r["validation_accuracy"]),
                    _fmt_seconds(r["train_seconds"]),
                ]
            )
    return rows


def per_class_rows(models: Sequence[Model]) -> list[list[str]]:
    """Per class: precision, recall and F1 of every model (mean ± std over seeds); the best mean in bold."""
    rows = []
    for name in CLASS_NAMES:
        row = [name]
        for metric in ("precision", "recall", "f1"):
            values = [[run.results["per_class"][name][metric] for run in m.runs] for m in models]
            best = max(np.mean(v) for v in values)
            for v in values:
                text = _mean_std(v, ".3f")
                row.append(f"**{text}**" if np.mean(v) == best and len(models) > 1 else text)
        rows.append(row)
    return rows


def compare_pair(a: Model, b: Model) -> dict[str, Any]:
    """Model a against model b on the same test images, for every seed both have (and both saved predictions
    for): the accuracy difference with its paired bootstrap interval, the exact McNemar test, and one sentence."""
    b_runs = {run.results["seed"]: run for run in b.runs}
    seeds = {}
    for run in a.runs:
        seed = run.results["seed"]
        other = b_runs.get(seed)
        ca, cb = correctness(run), None if other is None else correctness(other)
        if ca is None or cb is None:
            continue
        if not np.array_equal(run.predictions["labels"], other.predictions["labels"]):
            raise UserError(
                f"{run.workdir} and {other.workdir} were scored on different test images; pair runs on the same "
                "test set."
            )
        low, high = stats.paired_difference_interval(ca, cb, seed=seed)
        seeds[seed] = {"difference": float(ca.mean() - cb.mean()), "ci95": [low, high], **stats.mcnemar(ca, cb)}
    return {"a": a.label, "b": b.label, "seeds": seeds, "sentence": pair_sentence(a.title, b.title, seeds)}


def pair_sentence(a: str, b: str, seeds: dict[int, dict[str, Any]], level: float = 0.05) -> str:
    """One sentence on a pair of models over the seeds: the mean difference, the seeds' intervals and p-values.
    A difference is called established only when every seed's test finds it, in the same direction."""
    if not seeds:
        return f"{a} and {b}: no seed with both runs' predictions, so no paired test."
    diffs = np.array([s["difference"] for s in seeds.values()])
    ps = [s["p_value"] for s in seeds.values()]
    mean, one = float(diffs.mean()), len(seeds) == 1
    every = "" if one else " on every seed"
    if not np.any(diffs):
        return f"{a} and {b} are equally accurate on these test images (McNemar {stats.format_p(min(ps))}{every})."
    better, worse, sign = (a, b, 1.0) if mean >= 0 else (b, a, -1.0)
    # The intervals of better - worse: a's intervals as they are, or b's (negated and swapped).
    lows = [s["ci95"][0] if sign > 0 else -s["ci95"][1] for s in seeds.values()]
    highs = [s["ci95"][1] if sign > 0 else -s["ci95"][0] for s in seeds.values()]
    if one:
        ci = f"95% CI {100 * lows[0]:.1f} to {100 * highs[0]:.1f}"
    else:
        ci = f"each seed's 95% CI within {100 * min(lows):.1f} to {100 * max(highs):.1f}"
    consistent = bool(np.all(np.sign(diffs) == sign))
    if max(ps) < level and consistent:
        p = stats.format_p(ps[0]) if one else stats.format_p(max(ps)).replace("p = ", "p ≤ ") + every
        return f"{better} is more accurate than {worse} by {100 * abs(mean):.1f} points ({ci}; McNemar {p})."
    if one:
        spread = f"McNemar {stats.format_p(ps[0])}"
    else:
        spread = f"McNemar p from {min(ps):.2g} to {max(ps):.2g} across seeds"
    why = "" if consistent else "; the seeds disagree on which is better"
    return (
        f"{better} is ahead of {worse} by {100 * abs(mean):.1f} points on average, a difference these test "
        f"images do not establish ({ci}; {spread}{why})."
    )


def _p_cell(p: float) -> str:
    if p == 0:
        return "< 1e-300"
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def pair_rows(pairs: Sequence[dict[str, Any]], titles: dict[str, str]) -> list[list[str]]:
    rows = []
    for pair in pairs:
        for seed, s in pair["seeds"].items():
            rows.append(
                [
                    f"{titles[pair['a']]} − {titles[pair['b']]}",
                    str(seed),
                    f"{100 * s['difference']:+.2f}",
                    f"{100 * s['ci95'][0]:+.2f} to {100 * s['ci95'][1]:+.2f}",
                    str(s["only_a_correct"]),
                    str(s["only_b_correct"]),
                    _p_cell(s["p_value"]),
                ]
            )
    return rows


def search_rows(member: Member) -> list[list[str]]:
    """A searched model's grid: every setting, its validation accuracy and fit seconds, best first."""
    grid = sorted(
        member.results["search"]["grid"],
        key=lambda g: -1.0 if g["validation_accuracy"] is None else -g["validation_accuracy"],
    )
    return [
        [
            ", ".join(f"{k}={v}" for k, v in g["params"].items()),
            _fmt(g["validation_accuracy"]),
            f"{g['images']:,}" if "images" in g else "all",
            _fmt_seconds(g["fit_seconds"]),
        ]
        for g in grid
    ]


def report_json(models: Sequence[Model], pairs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Every number the report shows, keyed by model and seed, p-values as exact floats."""
    out: dict[str, Any] = {"confidence": stats.CONFIDENCE, "methods": METHODS, "models": {}, "pairs": list(pairs)}
    for m in models:
        runs = {}
        for run in m.runs:
            r = run.results
            runs[str(r["seed"])] = {
                "workdir": str(run.workdir),
                "test_accuracy": r["test_accuracy"],
                "test_accuracy_ci95": accuracy_interval(run),
                "validation_accuracy": r["validation_accuracy"],
                "train_seconds": r["train_seconds"],
                "predict_seconds": r["predict_seconds"],
                "per_class": r["per_class"],
                "num_params": r["num_params"],
                **({"search": r["search"]} if "search" in r else {}),
            }
        out["models"][m.label] = {
            "title": m.title,
            "model": m.runs[0].results["model"],
            "seeds": runs,
            "test_accuracy": stats.seed_summary(m.values("test_accuracy")),
            "per_class_f1": {
                c: stats.seed_summary([run.results["per_class"][c]["f1"] for run in m.runs]) for c in CLASS_NAMES
            },
            "published_test_accuracy": PUBLISHED.get(m.runs[0].results["model"])
            if m.label in PUBLISHED_CONFIGS
            else None,
        }
    return out


METHODS = {
    "test_accuracy_ci95": "exact binomial (Clopper-Pearson) interval over the test images, per seed",
    "difference_ci95": "paired percentile bootstrap over the test images (scipy.stats.bootstrap, "
    f"{stats.BOOTSTRAP_RESAMPLES} resamples), per seed",
    "p_value": "exact McNemar test: two-sided binomial test on the images exactly one model gets right "
    "(scipy.stats.binomtest), per seed",
    "seeds": "mean and sample standard deviation (ddof=1) over seeds",
}


# --------------------------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: pathlib.Path) -> pathlib.Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_confusion(member: Member, path: pathlib.Path) -> pathlib.Path:
    plt = _pyplot()
    cm = np.asarray(member.results["confusion_matrix"], np.float64)
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(rates.shape[0]):
        for j in range(rates.shape[1]):
            if cm[i, j]:
                pct = 100 * rates[i, j]
                ax.text(
                    j,
                    i,
                    f"{pct:.0f}" if pct >= 1 else f"{pct:.1f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black",
                )
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{member.title}: confusion matrix (% of each true class, test set)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return _save(fig, path)


def plot_curves(model: Model, path: pathlib.Path) -> pathlib.Path:
    """Train and validation loss and accuracy per epoch, one line per seed."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run in model.runs:
        seed = f" (seed {run.results['seed']})" if len(model.runs) > 1 else ""
        epochs = [r["epoch"] for r in run.history]
        for ax, key in ((axes[0], "loss"), (axes[1], "accuracy")):
            ax.plot(epochs, [r[f"train_{key}"] for r in run.history], "o-", ms=3, label=f"train (with dropout){seed}")
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
    best = member.results["search"]["best_params"]
    ax.set_xscale("log")
    ax.set_xlabel("fit seconds (log scale)")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.set_title(f"{member.title}: search (best: {', '.join(f'{k}={v}' for k, v in best.items())})")
    return _save(fig, path)


def _image_grid(
    images: np.ndarray,
    titles: Sequence[str],
    ncols: int,
    suptitle: str,
    path: pathlib.Path,
    row_labels: Sequence[str] | None = None,
) -> pathlib.Path:
    plt = _pyplot()
    nrows = max(1, int(np.ceil(len(images) / ncols)))
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(1.6 * ncols + (1.4 if row_labels else 0), (2.2 if any(titles) else 1.6) * nrows),
        squeeze=False,
    )
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k < len(images):
            ax.imshow(images[k], cmap="gray_r", vmin=0, vmax=255)
            ax.set_title(titles[k], fontsize=7.5)
        else:
            ax.axis("off")
    if row_labels:
        for r, label in enumerate(row_labels):
            axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(suptitle)
    fig.tight_layout(h_pad=1.2)
    return _save(fig, path)


def plot_errors(member: Member, path: pathlib.Path) -> pathlib.Path | None:
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


# --------------------------------------------------------------------------------------------- documents


@dataclasses.dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclasses.dataclass(frozen=True)
class Paragraph:
    text: str


@dataclasses.dataclass(frozen=True)
class BulletList:
    items: Sequence[str]


@dataclasses.dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclasses.dataclass(frozen=True)
class Image:
    path: pathlib.Path
    alt: str


Block = Heading | Paragraph | BulletList | Table | Image  # one piece of the report, in Markdown and HTML alike


def _md(blocks: Sequence[Block], out: pathlib.Path) -> str:
    lines = []
    for b in blocks:
        match b:
            case Heading():
                lines += ["#" * b.level + " " + b.text, ""]
            case Paragraph():
                lines += [b.text, ""]
            case BulletList():
                lines += [f"- {item}" for item in b.items] + [""]
            case Table():
                lines += ["| " + " | ".join(b.header) + " |", "|" + "---|" * len(b.header)]
                lines += ["| " + " | ".join(row) + " |" for row in b.rows] + [""]
            case Image():
                lines += [f"![{b.alt}]({b.path.relative_to(out).as_posix()})", ""]
    return "\n".join(lines)


def _inline_md(text: str) -> str:
    """The only Markdown the blocks use inline: **bold** and `code`."""
    parts = html.escape(text).split("**")
    text = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _html(blocks: Sequence[Block], title: str) -> str:
    body = []
    for b in blocks:
        match b:
            case Heading():
                body.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
            case Paragraph():
                body.append(f"<p>{_inline_md(b.text)}</p>")
            case BulletList():
                body.append("<ul>" + "".join(f"<li>{_inline_md(i)}</li>" for i in b.items) + "</ul>")
            case Table():
                head = "".join(f"<th>{_inline_md(h)}</th>" for h in b.header)
                rows = "".join("<tr>" + "".join(f"<td>{_inline_md(c)}</td>" for c in row) + "</tr>" for row in b.rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            case Image():
                data = base64.b64encode(b.path.read_bytes()).decode()
                body.append(
                    f'<figure><img alt="{html.escape(b.alt)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{html.escape(b.alt)}</figcaption></figure>"
                )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%}figure{margin:1em 0}figcaption{color:#666;font-size:13px}"
        "code{background:#f4f4f4;padding:1px 3px}"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def build(workdirs: Sequence[str | pathlib.Path], out: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """Writes out/report.md, out/report.html, out/report.json and out/plots/*.png for the finished runs in
    `workdirs` (runs of one config with distinct seeds are reported as one model)."""
    if not workdirs:
        raise UserError("the report needs at least one finished workdir")
    models = load_models(workdirs)
    runs = [run for m in models for run in m.runs]
    out = pathlib.Path(out)
    plots = out / "plots"
    try:
        plots.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot make the report's folder {plots} ({e.strerror}); choose another --out.") from e

    counts = {sum(c["support"] for c in r.results["per_class"].values()) for r in runs}
    checksums = {json.dumps(r.results.get("dataset_checksums"), sort_keys=True) for r in runs}
    same = ("the same " if len(counts) == 1 and len(checksums) == 1 else "") + " or ".join(
        f"{n:,}" for n in sorted(counts)
    )
    several = any(len(m.runs) > 1 for m in models)
    blocks: list[Block] = [
        Heading(level=1, text="Fashion-MNIST: model comparison"),
        Paragraph(
            f"All models are scored on {same} test images by `fmnist_jax.metrics`. "
            "The study's column is the test accuracy the original study published."
            + (" With several seeds, a figure is the mean ± the standard deviation over seeds." if several else "")
        ),
        Heading("Summary"),
        Table(header=SUMMARY_HEADER, rows=summary_rows(models)),
        BulletList(
            [
                f"**{m.title}**: `{run.workdir}`, seed {run.results['seed']}"
                + (" — did **not converge** (max_iter reached)" if run.results.get("converged") is False else "")
                for m in models
                for run in m.runs
            ]
        ),
    ]
    if several:
        blocks += [
            Heading("Seeds"),
            Table(
                header=[
                    "model",
                    "seed",
                    "test accuracy",
                    "95% CI (exact binomial)",
                    "validation accuracy",
                    "train time",
                ],
                rows=seed_rows(models),
            ),
        ]

    pairs = [compare_pair(a, b) for i, a in enumerate(models) for b in models[i + 1 :]]
    if pairs:
        titles = {m.label: m.title for m in models}
        blocks += [
            Heading("How sure are these differences?"),
            BulletList([pair["sentence"] for pair in pairs]),
            Paragraph(
                "Per pair and seed, on the same test images: the accuracy difference in points, its 95% paired "
                f"bootstrap interval ({stats.BOOTSTRAP_RESAMPLES} resamples of the test images), the images only "
                "one of the two gets right, and the exact McNemar p-value (a two-sided binomial test on those "
                "images). Each seed's test is valid on its own. The seeds share one test set, so they are not "
                "independent evidence: do not multiply or average their p-values; read a difference as real when "
                "every seed's test agrees (the largest p-value below the level you choose)."
            ),
            Table(
                header=[
                    "pair (a − b)",
                    "seed",
                    "difference (points)",
                    "95% CI (points)",
                    "only a right",
                    "only b right",
                    "McNemar p",
                ],
                rows=pair_rows(pairs, titles),
            ),
        ]

    blocks += [
        Heading("Per class: precision, recall, F1"),
        Paragraph("Best value of each metric per class in bold."),
        Table(
            header=["class"] + [f"{m.title} {k}" for k in ("P", "R", "F1") for m in models],
            rows=per_class_rows(models),
        ),
    ]
    if len(models) > 1:
        blocks.append(Image(plot_f1(models, plots / "f1_per_class.png"), "F1 per class and model"))

    searched = [m for m in models if "search" in m.runs[0].results]
    if searched:
        blocks.append(Heading("Searches"))
        for m in searched:
            member = m.runs[0]
            search = member.results["search"]
            blocks += [
                Paragraph(
                    f"**{m.title}**: {search['method']}, scored on the validation split only; the best setting "
                    f"({', '.join(f'{k}={v}' for k, v in search['best_params'].items())}) was refitted and scored "
                    f"on the test set like every model. Search time: {_fmt_seconds(search['seconds'])}."
                ),
                Table(
                    header=["setting", "validation accuracy", "images (train + validation)", "fit time"],
                    rows=search_rows(member),
                ),
                Image(plot_search(member, plots / f"search_{m.label}.png"), f"{m.title}: search"),
            ]

    blocks.append(Heading("Most confused classes"))
    for m in models:
        blocks.append(Paragraph(f"**{m.title}**" + (f" (seed {m.seeds[0]})" if len(m.runs) > 1 else "")))
        pairs_in_words = confused_pairs(m.runs[0].results["confusion_matrix"])
        blocks.append(
            BulletList(
                [f"{true} taken for {pred}: {rate:.1%}" for true, pred, rate in pairs_in_words]
                or ["no test image misclassified"]
            )
        )

    blocks.append(Heading("Confusion matrices"))
    for m in models:
        path = plot_confusion(m.runs[0], plots / f"confusion_{m.label}.png")
        blocks.append(Image(path, f"{m.title}: confusion matrix" + (f" (seed {m.seeds[0]})" if several else "")))

    curves = [m for m in models if m.runs[0].history]
    if curves:
        blocks.append(Heading("Training curves"))
        for m in curves:
            blocks.append(Image(plot_curves(m, plots / f"curves_{m.label}.png"), f"{m.title}: training curves"))

    blocks.append(Heading("Misclassified test images"))
    for m in models:
        path = plot_errors(m.runs[0], plots / f"errors_{m.label}.png")
        if path:
            blocks.append(Image(path, f"{m.title}: misclassified test images"))

    sample_source = next((r for r in runs if "sample_images" in r.predictions), None)
    if sample_source:
        blocks += [
            Heading("The classes"),
            Image(plot_samples(sample_source, plots / "samples_per_class.png"), "Test images by class"),
        ]

    md_path, html_path, json_path = out / "report.md", out / "report.html", out / REPORT_JSON
    files.atomic_write_text(json_path, json.dumps(report_json(models, pairs), indent=2) + "\n")
    files.atomic_write_text(md_path, _md(blocks, out))
    files.atomic_write_text(html_path, _html(blocks, "Fashion-MNIST: model comparison"))
    return {"markdown": md_path, "html": html_path, "json": json_path, "plots": plots}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fmnist_jax.report", description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", help="finished run folders (each with results.json)")
    parser.add_argument("--out", required=True, help="folder for report.md, report.html and plots/")
    args = parser.parse_args(argv)
    try:
        paths = build(args.workdirs, args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {paths['markdown']} and {paths['html']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
