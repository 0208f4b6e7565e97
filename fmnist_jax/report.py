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
from typing import Any, Sequence

import numpy as np

from fmnist_jax import metrics
from fmnist_jax.data import CLASS_NAMES
from fmnist_jax.errors import UserError

# Test accuracies the original study published, by model name.
PUBLISHED = {"seed_cnn": 0.8997, "random_forest": 0.879, "linear_svm": 0.76}
MODEL_TITLES = {"seed_cnn": "CNN (Flax)", "random_forest": "Random forest", "linear_svm": "Linear SVM"}
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
    return Member(label=results.get("config_name") or workdir.name, workdir=workdir, results=results,
                  history=history, predictions=predictions,
                  title=MODEL_TITLES.get(results["model"], results["model"]))


def load_members(workdirs: Sequence[str | pathlib.Path]) -> list[Member]:
    """Every workdir's member; runs of the same model get their folder name in title and file names."""
    members = [load_member(w) for w in workdirs]
    titles = [m.title for m in members]
    labels = [m.label for m in members]
    for m in members:
        if titles.count(m.title) > 1:
            m.title = f"{m.title} ({m.workdir.name})"
        if labels.count(m.label) > 1:
            m.label = f"{m.label}_{m.workdir.name}"
    return members


# --------------------------------------------------------------------------------------------- numbers


def confused_pairs(confusion: Sequence[Sequence[int]], class_names: Sequence[str] = CLASS_NAMES,
                   top: int = 5) -> list[tuple[str, str, float]]:
    """The `top` largest off-diagonal rates: (true class, predicted class, share of the true class)."""
    cm = np.asarray(confusion, np.float64)
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    np.fill_diagonal(rates, -1)
    order = np.argsort(rates, axis=None)[::-1][:top]
    return [(class_names[i], class_names[j], float(rates[i, j])) for i, j in zip(*np.unravel_index(order, rates.shape))
            if rates[i, j] > 0]


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    if s < 0.1:
        return f"{1000 * s:.0f} ms"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def summary_rows(members: Sequence[Member]) -> list[list[str]]:
    rows = []
    for m in members:
        r = m.results
        published = PUBLISHED.get(r["model"])
        checksum = ", ".join(f"{v[:12]}" for k, v in sorted(r.get("dataset_checksums", {}).items())
                             if "images" in k or k.startswith("tfds")) or "n/a"
        rows.append([m.title, _fmt(r["test_accuracy"]), _fmt(published), _fmt(r["validation_accuracy"]),
                     "n/a" if r["num_params"] is None else f"{r['num_params']:,}", _fmt_seconds(r["train_seconds"]),
                     _fmt_seconds(r["predict_seconds"]), _fmt(r["samples_per_second"], ",.0f"), checksum])
    return rows


def per_class_rows(members: Sequence[Member]) -> list[list[str]]:
    """Per class: precision, recall and F1 of every model; the best of each metric in the row in bold."""
    rows = []
    for name in CLASS_NAMES:
        row = [name]
        for metric in ("precision", "recall", "f1"):
            values = [m.results["per_class"][name][metric] for m in members]
            best = max(values)
            row += [f"**{v:.3f}**" if v == best and len(members) > 1 else f"{v:.3f}" for v in values]
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

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
                ax.text(j, i, f"{pct:.0f}" if pct >= 1 else f"{pct:.1f}", ha="center", va="center", fontsize=8,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{member.title}: confusion matrix (% of each true class, test set)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return _save(fig, path)


def plot_curves(member: Member, path: pathlib.Path) -> pathlib.Path:
    plt = _pyplot()
    epochs = [r["epoch"] for r in member.history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "loss", "cross-entropy loss"), (axes[1], "accuracy", "accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in member.history], "o-", ms=3, label="train (with dropout)")
        ax.plot(epochs, [r[f"validation_{key}"] for r in member.history], "s-", ms=3, label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title(f"{member.title}: loss per epoch")
    axes[1].set_title(f"{member.title}: accuracy per epoch")
    return _save(fig, path)


def _image_grid(images: np.ndarray, titles: Sequence[str], ncols: int, suptitle: str, path: pathlib.Path,
                row_labels: Sequence[str] | None = None) -> pathlib.Path:
    plt = _pyplot()
    nrows = max(1, int(np.ceil(len(images) / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols + (1.4 if row_labels else 0),
                                                    (2.2 if any(titles) else 1.6) * nrows), squeeze=False)
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
    return _image_grid(images, titles, 8, f"{member.title}: misclassified test images (the first {len(idx)}){note}",
                       path)


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


def plot_f1(members: Sequence[Member], path: pathlib.Path) -> pathlib.Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / len(members)
    x = np.arange(len(CLASS_NAMES))
    for k, m in enumerate(members):
        ax.bar(x + (k - (len(members) - 1) / 2) * width, [m.results["per_class"][c]["f1"] for c in CLASS_NAMES],
               width, label=m.title)
    ax.set_xticks(x, CLASS_NAMES, rotation=30, ha="right")
    ax.set_ylabel("F1 (test set)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=len(members), frameon=False)
    ax.set_title("F1 per class")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------- documents


@dataclasses.dataclass
class Block:
    """One piece of the report: a heading, a paragraph, a bullet list, a table or an image."""

    kind: str
    content: Any
    extra: Any = None


def _md(blocks: Sequence[Block], out: pathlib.Path) -> str:
    lines = []
    for b in blocks:
        if b.kind == "h1":
            lines += [f"# {b.content}", ""]
        elif b.kind == "h2":
            lines += [f"## {b.content}", ""]
        elif b.kind == "p":
            lines += [b.content, ""]
        elif b.kind == "list":
            lines += [f"- {item}" for item in b.content] + [""]
        elif b.kind == "table":
            lines += ["| " + " | ".join(b.extra) + " |", "|" + "---|" * len(b.extra)]
            lines += ["| " + " | ".join(row) + " |" for row in b.content] + [""]
        elif b.kind == "image":
            lines += [f"![{b.extra}]({b.content.relative_to(out).as_posix()})", ""]
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
        if b.kind in ("h1", "h2"):
            body.append(f"<{b.kind}>{html.escape(b.content)}</{b.kind}>")
        elif b.kind == "p":
            body.append(f"<p>{_inline_md(b.content)}</p>")
        elif b.kind == "list":
            body.append("<ul>" + "".join(f"<li>{_inline_md(i)}</li>" for i in b.content) + "</ul>")
        elif b.kind == "table":
            head = "".join(f"<th>{_inline_md(h)}</th>" for h in b.extra)
            rows = "".join("<tr>" + "".join(f"<td>{_inline_md(c)}</td>" for c in row) + "</tr>" for row in b.content)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b.kind == "image":
            data = base64.b64encode(b.content.read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(b.extra)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(b.extra)}</figcaption></figure>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}"
             "img{max-width:100%}figure{margin:1em 0}figcaption{color:#666;font-size:13px}"
             "code{background:#f4f4f4;padding:1px 3px}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def build(workdirs: Sequence[str | pathlib.Path], out: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """Writes out/report.md, out/report.html and out/plots/*.png for the finished runs in `workdirs`."""
    if not workdirs:
        raise UserError("the report needs at least one finished workdir")
    members = load_members(workdirs)
    out = pathlib.Path(out)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)

    counts = {sum(c["support"] for c in m.results["per_class"].values()) for m in members}
    checksums = {json.dumps(m.results.get("dataset_checksums"), sort_keys=True) for m in members}
    same = ("the same " if len(counts) == 1 and len(checksums) == 1 else "") + " or ".join(
        f"{n:,}" for n in sorted(counts))
    blocks = [Block("h1", "Fashion-MNIST: model comparison"),
              Block("p", f"All models are scored on {same} test images by `fmnist_jax.metrics`. "
                         "The study's column is the test accuracy the original study published.")]
    blocks += [Block("h2", "Summary"), Block("table", summary_rows(members), [
        "model", "test accuracy", "study", "validation accuracy", "parameters", "train time", "predict time",
        "images/s (predict)", "data SHA-256 (images)"])]
    notes = [f"**{m.title}**: `{m.workdir}`, seed {m.results['seed']}" +
             ("" if m.results.get("converged", True) is not False else " — did **not converge** (max_iter reached)")
             for m in members]
    blocks.append(Block("list", notes))

    blocks += [Block("h2", "Per class: precision, recall, F1"),
               Block("p", "Best value of each metric per class in bold."),
               Block("table", per_class_rows(members),
                     ["class"] + [f"{m.title} {k}" for k in ("P", "R", "F1") for m in members])]
    if len(members) > 1:
        blocks.append(Block("image", plot_f1(members, plots / "f1_per_class.png"), "F1 per class and model"))

    blocks.append(Block("h2", "Most confused classes"))
    for m in members:
        pairs = confused_pairs(m.results["confusion_matrix"])
        blocks.append(Block("p", f"**{m.title}**"))
        blocks.append(Block("list", [f"{true} taken for {pred}: {rate:.1%}" for true, pred, rate in pairs]
                            or ["no test image misclassified"]))

    blocks.append(Block("h2", "Confusion matrices"))
    for m in members:
        blocks.append(Block("image", plot_confusion(m, plots / f"confusion_{m.label}.png"),
                            f"{m.title}: confusion matrix"))

    curves = [m for m in members if m.history]
    if curves:
        blocks.append(Block("h2", "Training curves"))
        for m in curves:
            blocks.append(Block("image", plot_curves(m, plots / f"curves_{m.label}.png"), f"{m.title}: training curves"))

    blocks.append(Block("h2", "Misclassified test images"))
    for m in members:
        path = plot_errors(m, plots / f"errors_{m.label}.png")
        if path:
            blocks.append(Block("image", path, f"{m.title}: misclassified test images"))

    sample_source = next((m for m in members if "sample_images" in m.predictions), None)
    if sample_source:
        blocks += [Block("h2", "The classes"),
                   Block("image", plot_samples(sample_source, plots / "samples_per_class.png"), "Test images by class")]

    md_path, html_path = out / "report.md", out / "report.html"
    metrics.atomic_write_text(md_path, _md(blocks, out))
    metrics.atomic_write_text(html_path, _html(blocks, "Fashion-MNIST: model comparison"))
    return {"markdown": md_path, "html": html_path, "plots": plots}


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
