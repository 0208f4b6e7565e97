"""The statistics in words: what a paired test establishes, how a p-value is written, which classes are confused,
and how each method is described in the report and in report.json."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fmnist_jax import stats

if TYPE_CHECKING:
    from fmnist_jax.report.runs import Model

LEVEL = 0.05  # the level at which a sentence calls a difference established, after Holm's correction over the pairs
PAIRED_TESTS = (
    "Per pair and seed, on the same test images: the accuracy difference in points, its 95% paired "
    f"bootstrap interval ({stats.BOOTSTRAP_RESAMPLES} resamples of the test images), the images only "
    "one of the two gets right, and the exact McNemar p-value (a two-sided binomial test on those "
    "images). Each seed's test is valid on its own. The seeds share one test set, so they are not "
    "independent evidence: do not multiply or average their p-values; read a difference as real when "
    "every seed's test agrees, in the same direction (a pair's p-value is its largest over the seeds). "
    f"With several pairs, the sentences call a difference established at the {LEVEL} level after Holm's "
    "correction for the number of pairs tested. The percentile interval can leave out 0 while the exact "
    "p-value is just above the level: read such a pair by its p-value."
)
METHODS = {
    "test_accuracy_ci95": "exact binomial (Clopper-Pearson) interval over the test images, per seed",
    "difference_ci95": "paired percentile bootstrap over the test images (scipy.stats.bootstrap, "
    f"{stats.BOOTSTRAP_RESAMPLES} resamples), per seed",
    "p_value": "exact McNemar test: two-sided binomial test on the images exactly one model gets right "
    "(scipy.stats.binomtest), per seed",
    "p_holm": "per pair: its largest McNemar p-value over the seeds, adjusted by Holm's step-down correction "
    f"for the number of pairs tested; a difference is called established where it is below {LEVEL}",
    "seeds": "mean and sample standard deviation (ddof=1) over seeds; none (null) for one seed",
}


def _better_minus_worse(seeds: dict[int, dict[str, Any]], sign: float) -> tuple[list[float], list[float]]:
    """The seeds' intervals of better - worse: a's intervals as they are, or b's (negated and swapped)."""
    lows = [s["ci95"][0] if sign > 0 else -s["ci95"][1] for s in seeds.values()]
    highs = [s["ci95"][1] if sign > 0 else -s["ci95"][0] for s in seeds.values()]
    return lows, highs


def _p_range(ps: Sequence[float]) -> str:
    """ "0.002 to 0.2": the smallest and the largest p-value, each on its side of the usual levels."""
    return f"{stats.p_text(min(ps), '.2g')} to {stats.p_text(max(ps), '.2g')}"


def seed_list(seeds: Sequence[int]) -> str:
    """Seeds in words: "seed 0", "seeds 0 and 2", "seeds 0, 1 and 2"."""
    names = [str(s) for s in seeds]
    return ("seed " if len(names) == 1 else "seeds ") + (
        " and ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + f" and {names[-1]}"
    )


def pair_sentence(
    a: str,
    b: str,
    seeds: dict[int, dict[str, Any]],
    level: float = LEVEL,
    *,
    untested: Sequence[int] = (),
    corrected: tuple[float, int] | None = None,
) -> str:
    """One sentence on a pair of models over the seeds tested: the mean difference, the seeds' intervals and
    p-values. A difference is called established only when every seed's test finds it, in the same direction, and
    with `corrected` = (the pair's Holm-adjusted p-value, the number of pairs) for several pairs, only when that is
    below `level` too. `untested`: the seeds of either model without a paired test (the other's run or a
    predictions.npz missing), named, so that no claim reads as if made for them."""
    missing = f" No paired test for {seed_list(untested)} (a run or its predictions.npz missing)." if untested else ""
    if not seeds:
        return f"{a} and {b}: no seed with both runs' predictions, so no paired test."
    diffs = np.array([s["difference"] for s in seeds.values()])
    ps = [s["p_value"] for s in seeds.values()]
    mean, one = float(diffs.mean()), len(seeds) == 1
    where = f" on {seed_list(list(seeds))}" if untested else ("" if one else " on every seed")
    if not np.any(diffs):
        return f"{a} and {b} are equally accurate on these test images (McNemar {stats.format_p(min(ps))}{where})." + (
            missing
        )
    better, worse, sign = (a, b, 1.0) if mean >= 0 else (b, a, -1.0)
    lows, highs = _better_minus_worse(seeds, sign)
    if one:
        ci = f"95% CI {100 * lows[0]:.1f} to {100 * highs[0]:.1f}"
    else:
        ci = f"each seed's 95% CI within {100 * min(lows):.1f} to {100 * max(highs):.1f}"
    tied = [s for s, t in seeds.items() if t["difference"] == 0]
    if np.any(diffs > 0) and np.any(diffs < 0):  # each model ahead on some seed
        return _trading_places(a, b, seeds, tied) + missing
    consistent = bool(np.all(np.sign(diffs) == sign))  # not where a seed ties
    over = f"on {seed_list(list(seeds))}" if one else "on average"
    adjusted, pairs = corrected if corrected and corrected[1] > 1 else (max(ps), 1)
    holm = f"; Holm-adjusted for the {pairs} pairs, {stats.format_p(adjusted)}" if pairs > 1 else ""
    if max(ps) < level and consistent:
        p = stats.format_p(ps[0]) if one else stats.format_p(max(ps), upper=True)
        if adjusted < level:
            return (
                f"{better} is more accurate than {worse} by {_points(mean)} points ({ci}; McNemar {p}{where}{holm})."
                + missing
            )
        why, tests = f" once corrected for the {pairs} pairs", f"McNemar {p}{where}{holm}"
    else:
        if one:
            spread = f"McNemar {stats.format_p(ps[0])}"  # its seed named in the sentence
        else:
            spread = f"McNemar p from {_p_range(ps)} across {seed_list(list(seeds)) if untested else 'seeds'}"
        why, tests = "", spread + (f"; equal on {seed_list(tied)}" if tied else "")
    return (
        f"{better} is ahead of {worse} by {_points(mean)} points {over}, a difference these test "
        f"images do not establish{why} ({ci}; {tests}).{missing}"
    )


def _points(difference: float) -> str:
    """|difference| in percentage points, with a second decimal below 0.1 (one would round it to 0.0 or 0.1), and
    "under 0.01" below 0.005."""
    points = 100 * abs(difference)
    return "under 0.01" if points < 0.005 else f"{points:.2f}" if points < 0.1 else f"{points:.1f}"


def _trading_places(a: str, b: str, seeds: dict[int, dict[str, Any]], tied: Sequence[int]) -> str:
    """The sentence for seeds that disagree on which model is better: each side's seeds with their intervals and
    p-values, and the `tied` seeds. However sure each seed's test is, which model wins depends on the training run."""
    sides = []
    for name, sign in ((a, 1.0), (b, -1.0)):
        won = {s: t for s, t in seeds.items() if np.sign(t["difference"]) == sign}
        if won:
            lows, highs = _better_minus_worse(won, sign)
            ps = [t["p_value"] for t in won.values()]
            p = stats.format_p(ps[0]) if len(won) == 1 else f"p from {_p_range(ps)}"
            ci = f"95% CI {'' if len(won) == 1 else 'within '}{100 * min(lows):.1f} to {100 * max(highs):.1f} points"
            sides.append(f"{name}{'' if sides else ' is ahead'} on {seed_list(list(won))} ({ci}; McNemar {p})")
    sides += [f"neither on {seed_list(tied)}"] if tied else []
    return (
        f"The seeds disagree on which of {a} and {b} is more accurate: {', '.join(sides)}; it depends on the training "
        "run, and neither is established."
    )


def p_cell(p: float) -> str:
    """A p-value for a table cell: three significant digits, or scientific form when tiny (`stats.p_text`)."""
    if p == 0:
        return "< 1e-300"
    return stats.p_text(p, ".3g" if p >= 1e-4 else ".1e")


def confused_in_words(pairs: Sequence[tuple[str, str, float]]) -> list[str]:
    """The most confused (true, predicted, rate) pairs as bullets; one bullet when nothing was misclassified."""
    return [f"{true} taken for {pred}: {rate:.1%}" for true, pred, rate in pairs] or ["no test image misclassified"]


def trained_on_other_numbers(models: Sequence[Model]) -> str | None:
    """Where the models trained on different numbers of images (a config that trains on all 60,000 beside the
    study's 48,000), a sentence saying so: a paired test then weighs the data with the recipe. None where they did
    not, or where a run does not record it (results older than the field)."""
    per_model = {m.title: {r.results.get("num_train_images") for r in m.runs} for m in models}
    if any(len(c) != 1 or None in c for c in per_model.values()):  # unrecorded, or seeds that differ in it
        return None
    counts = {title: next(iter(c)) for title, c in per_model.items()}
    if len(set(counts.values())) < 2:
        return None
    listed = "; ".join(f"{title}: {n:,}" for title, n in counts.items())
    return (
        f"The models trained on different numbers of images ({listed}): each pair's test compares two models as they "
        "were trained, the data they had with their recipe."
    )
