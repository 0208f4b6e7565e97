"""How sure a comparison is: intervals for one model's accuracy and tests for a pair scored on the same images.

Every function takes plain NumPy (per-image correctness as booleans) and returns plain numbers, computed by
`scipy.stats`:
- `accuracy_interval`: the exact (Clopper-Pearson) binomial interval of an accuracy over n test images;
- `mcnemar`: the exact McNemar test, a two-sided binomial test on the images exactly one of two models gets
  right (under "equally accurate" each such image is a fair coin);
- `paired_difference_interval`: a paired bootstrap interval of the accuracy difference, resampling test images
  with both models' answers kept together;
- `seed_summary`: mean, sample standard deviation and every value over seeds;
- `holm`: Holm's step-down adjustment of several tests' p-values (one per pair of models).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000


def accuracy_interval(correct: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact binomial (Clopper-Pearson) interval of the share of True in `correct`."""
    correct = np.asarray(correct, bool)
    return count_interval(int(correct.sum()), len(correct), confidence)


def count_interval(right: int, images: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact binomial (Clopper-Pearson) interval of an accuracy of `right` out of `images`."""
    ci = stats.binomtest(right, images).proportion_ci(confidence, method="exact")
    return float(ci.low), float(ci.high)


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> dict[str, Any]:
    """The exact McNemar test of two models on the same images: the discordant counts and the p-value."""
    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    if a.shape != b.shape:
        raise ValueError(f"the two models were scored on different images: {a.shape} vs {b.shape}")
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    p = 1.0 if only_a + only_b == 0 else float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return {"only_a_correct": only_a, "only_b_correct": only_b, "p_value": p}


def paired_difference_interval(
    a_correct: np.ndarray,
    b_correct: np.ndarray,
    *,
    seed: int = 0,
    confidence: float = CONFIDENCE,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
) -> tuple[float, float]:
    """A paired percentile-bootstrap interval of accuracy(a) - accuracy(b) over the same test images."""
    a, b = np.asarray(a_correct, np.float64), np.asarray(b_correct, np.float64)
    if np.array_equal(a, b) or len(a) == 1:  # every resample's difference is the observed one
        difference = float(a.mean() - b.mean())
        return difference, difference

    def difference(x, y, axis=-1):
        return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    result = stats.bootstrap(
        (a, b),
        difference,
        paired=True,
        vectorized=True,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
        batch=200,
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def seed_summary(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (None for one seed: it has none) and the values themselves."""
    values = [float(v) for v in values]
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
        "values": values,
    }


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: each of m p-values (one per hypothesis, in any order) adjusted, in the same
    order. Calling a result where its adjusted p-value is below a level keeps the chance of any false call among
    the m at most that level, whatever their dependence."""
    m, adjusted, largest = len(p_values), [1.0] * len(p_values), 0.0
    for rank, i in enumerate(np.argsort(p_values, kind="stable")):
        largest = max(largest, min(1.0, (m - rank) * float(p_values[i])))
        adjusted[i] = largest
    return adjusted


P_LEVELS = (0.05, 0.01, 0.001)  # the usual significance levels: a printed p-value never crosses nor meets one


def p_text(p: float, spec: str, *, upper: bool = False) -> str:
    """`p` in the format `spec` ('.3f', '.2g', ...), with as many more significant digits as it takes to print it on
    the same side of every P_LEVELS level, and on none unless it is one (0.04996 is '0.04996', 0.0501 '0.0501').
    `upper`: rounded up, never down, for a bound ('p ≤ 0.031' for 0.0304)."""
    text = _rounded(p, spec, upper)
    for digits in range(2, 18):
        if all((float(text) < level) == (p < level) and (float(text) == level) == (p == level) for level in P_LEVELS):
            return text
        text = _rounded(p, f".{digits}g", upper)
    return repr(p)


def _rounded(p: float, spec: str, upper: bool) -> str:
    """format(p, spec), or with `upper` the next value up in its last printed digit where that rounded down."""
    text = format(p, spec)
    if upper and float(text) < p:
        precision = int(spec[1:-1])
        last = -precision if spec.endswith("f") else math.floor(math.log10(p)) - precision + 1
        text = format(float(text) + 10.0**last, spec)
    return text


def format_p(p: float, *, upper: bool = False) -> str:
    """A p-value for a sentence: 'p = 0.034', 'p < 1e-6' (`p_text`: never rounded onto or across a usual level);
    `upper`, a bound on several: 'p ≤ 0.031', rounded up."""
    if p < 1e-6:
        return "p < 1e-6"
    return ("p ≤ " if upper else "p = ") + p_text(p, ".2g" if p < 0.001 else ".3f", upper=upper)
