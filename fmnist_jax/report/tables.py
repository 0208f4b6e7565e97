"""The report's numbers: every table's header and rows, the paired tests behind them, and report.json.

Cells are strings, formatted here and nowhere else; the section functions in `build` only place them.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from fmnist_jax import checksums, stats
from fmnist_jax.data import CLASS_NAMES
from fmnist_jax.errors import UserError
from fmnist_jax.metrics import fmt
from fmnist_jax.report import sentences
from fmnist_jax.report.runs import Member, Model, accuracy_interval, confusion_rates, correctness, published_accuracy

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
SEED_HEADER = ["model", "seed", "test accuracy", "95% CI (exact binomial)", "validation accuracy", "train time"]
PAIR_HEADER = [
    "pair (a − b)",
    "seed",
    "difference (points)",
    "95% CI (points)",
    "only a right",
    "only b right",
    "McNemar p",
]
SEARCH_HEADER = ["setting", "validation accuracy", "images (train + validation)", "fit time"]


def fmt_seconds(s: float | None) -> str:
    """A duration in the unit a reader takes in at a glance: ms, s or min."""
    if s is None:
        return "n/a"
    if s < 0.1:
        return f"{1000 * s:.0f} ms"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def mean_std(values: Sequence[float], spec: str = ".4f") -> str:
    """One value as it is; several as mean ± sample standard deviation."""
    if len(values) == 1:
        return format(values[0], spec)
    summary = stats.seed_summary(values)
    return f"{format(summary['mean'], spec)} ± {format(summary['std'], spec)}"


def _mean(values: Sequence[float | None]) -> float | None:
    """The mean of the known values (None when none is known)."""
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def _covering(known: int, seeds: int) -> str:
    """ " (2 of 3 seeds)" after a figure that some of a model's seeds lack; "" where all or none have it."""
    return f" ({known} of {seeds} seeds)" if 0 < known < seeds else ""


def _mean_cell(values: Sequence[float | None], cell) -> str:
    """`cell` of the mean of the known values, saying over how many seeds when some are unknown."""
    return cell(_mean(values)) + _covering(sum(v is not None for v in values), len(values))


def _throughput(model: Model) -> str:
    """Images predicted per second over the model's seeds: all images over all seconds (not a mean of rates)."""
    timed = [r.results for r in model.runs if r.results.get("predict_seconds") and r.results.get("samples_per_second")]
    images = sum(r["samples_per_second"] * r["predict_seconds"] for r in timed)  # each run's images predicted
    rate = images / sum(r["predict_seconds"] for r in timed) if timed else None
    return fmt(rate, ",.0f") + _covering(len(timed), len(model.runs))


def _interval(member: Member) -> str:
    """A run's exact accuracy interval as a cell."""
    ci = accuracy_interval(member)
    return "n/a" if ci is None else f"{ci[0]:.4f}–{ci[1]:.4f}"


def settings(params: dict[str, Any]) -> str:
    """Estimator settings as `k=v, ...`."""
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _checksums(results: dict[str, Any]) -> str:
    """The start of the image files' SHA-256 sums, so a reader sees the runs used the same data."""
    sums = sorted(results.get("dataset_checksums", {}).items())
    return ", ".join(v[:12] for k, v in sums if "images" in k or k.startswith("tfds")) or "n/a"


def _params(model: Model) -> str:
    """The parameter count (of the first seed, said so when the seeds differ)."""
    params = model.runs[0].results["num_params"]
    if params is None:
        return "n/a"
    return f"{params:,}" + ("" if len(set(model.values("num_params"))) == 1 else f" (seed {model.seeds[0]})")


def summary_rows(models: Sequence[Model]) -> list[list[str]]:
    """One row per model: accuracy over seeds, interval, the study's figure, size, timings, seeds and data."""
    return [
        [
            m.title,
            mean_std(m.values("test_accuracy")),
            _interval(m.runs[0]) if len(m.runs) == 1 else "per seed below",
            fmt(published_accuracy(m)),
            _mean_cell(m.values("validation_accuracy"), fmt),
            _params(m),
            _mean_cell(m.values("train_seconds"), fmt_seconds),
            _mean_cell(m.values("predict_seconds"), fmt_seconds),
            _throughput(m),
            str(len(m.runs)),
            _checksums(m.runs[0].results),
        ]
        for m in models
    ]


def seed_rows(models: Sequence[Model]) -> list[list[str]]:
    """One row per run of a model with several seeds: its accuracy, exact interval and validation accuracy."""
    return [
        [
            m.title,
            str(run.results["seed"]),
            f"{run.results['test_accuracy']:.4f}",
            _interval(run),
            fmt(run.results["validation_accuracy"]),
            fmt_seconds(run.results["train_seconds"]),
        ]
        for m in models
        if len(m.runs) >= 2
        for run in m.runs
    ]


def per_class_header(models: Sequence[Model]) -> list[str]:
    """The class, then precision, recall and F1 of every model."""
    return ["class"] + [f"{m.title} {k}" for k in ("P", "R", "F1") for m in models]


def per_class_rows(models: Sequence[Model]) -> list[list[str]]:
    """Per class: precision, recall and F1 of every model (mean ± std over seeds); the best mean in bold, and each
    that shows as the same figure (0.88835 and 0.88825 are both 0.888: a tie as the table reads)."""
    rows = []
    for name in CLASS_NAMES:
        row = [name]
        for metric in ("precision", "recall", "f1"):
            values = [[run.results["per_class"][name][metric] for run in m.runs] for m in models]
            best = format(max(np.mean(v) for v in values), ".3f")
            for v in values:
                text = mean_std(v, ".3f")
                row.append(f"**{text}**" if format(np.mean(v), ".3f") == best and len(models) > 1 else text)
        rows.append(row)
    return rows


def compare_pair(a: Model, b: Model) -> dict[str, Any]:
    """Model a against model b on the same test images, for every seed both have (and both saved predictions
    for): the accuracy difference with its paired bootstrap interval and the exact McNemar test."""
    for run, other in itertools.product(a.runs, b.runs):  # every run, with a paired test or without
        if how := checksums.other_test_images(
            run.results.get("dataset_checksums"), other.results.get("dataset_checksums")
        ):
            raise UserError(
                f"{run.workdir} and {other.workdir} cannot be paired: their test images differ ({how}); pair runs on "
                "the same test set."
            )
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
    untested = sorted((set(a.seeds) | set(b.seeds)) - set(seeds))
    return {"a": a.label, "b": b.label, "seeds": seeds, "untested_seeds": untested}


def compare_pairs(models: Sequence[Model]) -> list[dict[str, Any]]:
    """Every pair of models, in report order, each with its p-value (its seeds' largest) adjusted by Holm's
    correction for the pairs tested (`p_holm`; null for a pair without a paired test) and its sentence."""
    pairs = [compare_pair(a, b) for i, a in enumerate(models) for b in models[i + 1 :]]
    titles = {m.label: m.title for m in models}
    tested = [max(s["p_value"] for s in pair["seeds"].values()) for pair in pairs if pair["seeds"]]
    adjusted = iter(stats.holm(tested))
    for pair in pairs:
        pair["p_holm"] = next(adjusted) if pair["seeds"] else None
        corrected = None if pair["p_holm"] is None else (pair["p_holm"], len(tested))
        pair["sentence"] = sentences.pair_sentence(
            titles[pair["a"]], titles[pair["b"]], pair["seeds"], untested=pair["untested_seeds"], corrected=corrected
        )
    return pairs


def pair_rows(pairs: Sequence[dict[str, Any]], titles: dict[str, str]) -> list[list[str]]:
    """One row per pair and seed: the difference in points, its interval, the discordant images, the p-value."""
    return [
        [
            f"{titles[pair['a']]} − {titles[pair['b']]}",
            str(seed),
            f"{100 * s['difference']:+.2f}",
            f"{100 * s['ci95'][0]:+.1f} to {100 * s['ci95'][1]:+.1f}",  # its ends move by ~0.02 with the resamples
            str(s["only_a_correct"]),
            str(s["only_b_correct"]),
            sentences.p_cell(s["p_value"]),
        ]
        for pair in pairs
        for seed, s in pair["seeds"].items()
    ]


def search_rows(member: Member) -> list[list[str]]:
    """A searched model's grid: every setting, its validation accuracy and fit seconds, best first; for successive
    halving the last round's first (the most images), so that the top row is the setting chosen."""
    grid = sorted(
        member.results["search"]["grid"],
        key=lambda g: (-g.get("images", 0), g["validation_accuracy"] is None, -(g["validation_accuracy"] or 0)),
    )
    return [
        [
            settings(g["params"]),
            fmt(g["validation_accuracy"]),
            f"{g['images']:,}" if "images" in g else "all",
            fmt_seconds(g["fit_seconds"]),
        ]
        for g in grid
    ]


def search_paragraph(model: Model) -> str:
    """How a model's search ran and what it chose."""
    search = model.runs[0].results["search"]
    return (
        f"**{model.title}**: {search['method']}, scored on the validation split only; the best setting "
        f"({settings(search['best_params'])}) was refitted and scored "
        f"on the test set like every model. Search time: {fmt_seconds(search['seconds'])}."
    )


def confused_pairs(
    confusion: Sequence[Sequence[int]], class_names: Sequence[str] = CLASS_NAMES, top: int = 5
) -> list[tuple[str, str, float]]:
    """The `top` largest off-diagonal rates: (true class, predicted class, share of the true class)."""
    rates = confusion_rates(confusion)
    np.fill_diagonal(rates, -1)
    order = np.argsort(rates, axis=None)[::-1][:top]
    return [
        (class_names[i], class_names[j], float(rates[i, j]))
        for i, j in zip(*np.unravel_index(order, rates.shape), strict=True)
        if rates[i, j] > 0
    ]


def _run_json(run: Member) -> dict[str, Any]:
    """One run's numbers for report.json."""
    r = run.results
    return {
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


def report_json(models: Sequence[Model], pairs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The report's numbers per run (scores, per-class figures, timings) and per pair, keyed by model and seed,
    p-values as exact floats (the confusion matrices stay in each run's results.json)."""
    out: dict[str, Any] = {
        "confidence": stats.CONFIDENCE,
        "methods": sentences.METHODS,
        "models": {},
        "pairs": list(pairs),
    }
    for m in models:
        out["models"][m.label] = {
            "title": m.title,
            "model": m.runs[0].results["model"],
            "seeds": {str(run.results["seed"]): _run_json(run) for run in m.runs},
            "test_accuracy": stats.seed_summary(m.values("test_accuracy")),
            "per_class_f1": {
                c: stats.seed_summary([run.results["per_class"][c]["f1"] for run in m.runs]) for c in CLASS_NAMES
            },
            "published_test_accuracy": published_accuracy(m),
        }
    return out
