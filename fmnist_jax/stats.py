"""How sure a comparison is: intervals for one model's accuracy and tests for a pair scored on the same images.

Every function takes plain NumPy (per-image correctness as booleans) and returns plain numbers, computed by
`scipy.stats`:
- `accuracy_interval`: the exact (Clopper-Pearson) binomial interval of an accuracy over n test images;
- `mcnemar`: the exact McNemar test, a two-sided binomial test on the images exactly one of two models gets
  right (under "equally accurate" each such image is a fair coin);
- `paired_difference_interval`: a paired bootstrap interval of the accuracy difference, resampling test images
  with both models' answers kept together;
- `seed_summary`: mean, sample standard deviation and every value over seeds.
"""

from __future__ import annotations

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
    if np.array_equal(a, b):  # every resample's difference is 0
        return 0.0, 0.0

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


P_LEVELS = (0.05, 0.01, 0.001)  # the usual significance levels: a printed p-value never crosses nor meets one


def p_text(p: float, spec: str) -> str:
    """`p` in the format `spec` ('.3f', '.2g', ...), with as many more significant digits as it takes to print it on
    the same side of every P_LEVELS level, and on none unless it is one (0.04996 is '0.04996', 0.0501 '0.0501')."""
    text = format(p, spec)
    for digits in range(2, 18):
        if all((float(text) < level) == (p < level) and (float(text) == level) == (p == level) for level in P_LEVELS):
            return text
        text = f"{p:.{digits}g}"
    return repr(p)


def format_p(p: float) -> str:
    """A p-value for a sentence: 'p = 0.034', 'p < 1e-6' (`p_text`: never rounded onto or across a usual level)."""
    if p < 1e-6:
        return "p < 1e-6"
    return "p = " + p_text(p, ".2g" if p < 0.001 else ".3f")
