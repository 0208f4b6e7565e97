"""stats.py against worked examples with published answers and against a second, independent computation."""

import math

import numpy as np
import pytest
from scipy import special

from fmnist_jax import stats


def paired(only_a: int, only_b: int, both: int = 0, neither: int = 0) -> tuple[np.ndarray, np.ndarray]:
    a = np.r_[np.ones(only_a), np.zeros(only_b), np.ones(both), np.zeros(neither)].astype(bool)
    b = np.r_[np.zeros(only_a), np.ones(only_b), np.ones(both), np.zeros(neither)].astype(bool)
    return a, b


def test_mcnemar_exact_matches_the_published_worked_example():
    # Fagerland, Lydersen and Laake (2013), BMC Med Res Methodol 13:91, Table 1 (Bentur et al.): 21 children,
    # discordant pairs 1 and 7; the exact conditional McNemar test gives p = 0.070 (= 18/256).
    a, b = paired(1, 7, both=1, neither=12)
    result = stats.mcnemar(a, b)
    assert (result["only_a_correct"], result["only_b_correct"]) == (1, 7)
    assert round(result["p_value"], 3) == 0.070 and result["p_value"] == pytest.approx(18 / 256, rel=1e-12)


@pytest.mark.parametrize("only_a, only_b", [(0, 0), (5, 5), (3, 12), (40, 25), (120, 180)])
def test_mcnemar_equals_the_binomial_sum_written_out(only_a, only_b):
    a, b = paired(only_a, only_b, both=50, neither=7)
    n, k = only_a + only_b, min(only_a, only_b)
    expected = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    assert stats.mcnemar(a, b)["p_value"] == pytest.approx(expected, rel=1e-9)
    assert stats.mcnemar(b, a)["p_value"] == stats.mcnemar(a, b)["p_value"]


def test_clopper_pearson_matches_published_values_and_the_beta_quantiles():
    # 0 of 10 successes: the exact 95% interval is [0, 0.3085] (Clopper and Pearson's tables).
    low, high = stats.accuracy_interval(np.zeros(10, bool))
    assert low == 0.0 and round(high, 4) == 0.3085
    correct = np.r_[np.ones(8991), np.zeros(1009)].astype(bool)  # an accuracy of 0.8991 on 10,000 images
    low, high = stats.accuracy_interval(correct)
    k, n = 8991, 10000
    assert low == pytest.approx(special.betaincinv(k, n - k + 1, 0.025), rel=1e-9)
    assert high == pytest.approx(special.betaincinv(k + 1, n - k, 0.975), rel=1e-9)
    assert 0.005 < (high - low) / 2 < 0.007  # the ±0.6 points a 10k test set allows near 0.90
    # Another confidence is the beta quantiles at its own tails (a 99% interval is wider).
    low99, high99 = stats.accuracy_interval(correct, 0.99)
    assert low99 == pytest.approx(special.betaincinv(k, n - k + 1, 0.005), rel=1e-9) and low99 < low
    assert high99 == pytest.approx(special.betaincinv(k + 1, n - k, 0.995), rel=1e-9) and high99 > high


def test_paired_bootstrap_agrees_with_a_plain_numpy_bootstrap():
    rng = np.random.default_rng(1)
    a = rng.random(4000) < 0.90
    b = np.where(rng.random(4000) < 0.9, a, ~a)  # b agrees with a on ~90% of the images
    low, high = stats.paired_difference_interval(a, b, seed=0, n_resamples=4000)
    idx = np.random.default_rng(5).integers(0, len(a), (4000, len(a)))
    diffs = a[idx].mean(1) - b[idx].mean(1)
    assert low == pytest.approx(np.percentile(diffs, 2.5), abs=0.002)
    assert high == pytest.approx(np.percentile(diffs, 97.5), abs=0.002)
    assert low < a.mean() - b.mean() < high
    # Its width is the 95% normal interval's (seeds 0-7: 0.96-1.01 of it); a 90% interval's is 0.82-0.86 of it.
    se = (a.astype(np.float64) - b).std(ddof=1) / np.sqrt(len(a))
    assert (high - low) / 2 == pytest.approx(special.ndtri(0.975) * se, rel=0.08)
    assert stats.paired_difference_interval(a, b, seed=0) == stats.paired_difference_interval(a, b, seed=0)
    # The seed picks the resamples: each seed of a comparison gets its own (the report passes the run's seed).
    assert stats.paired_difference_interval(a, b, seed=1) != stats.paired_difference_interval(a, b, seed=0)
    assert stats.paired_difference_interval(a, a) == (0.0, 0.0)
    # One image: every resample is that image, so the difference it shows (scipy refuses a single observation).
    assert stats.paired_difference_interval(np.array([True]), np.array([False])) == (1.0, 1.0)


def test_seed_summary_and_p_value_words():
    assert stats.seed_summary([0.9, 0.92, 0.91]) == {
        "mean": pytest.approx(0.91),
        "std": pytest.approx(0.01),
        "values": [0.9, 0.92, 0.91],
    }
    assert stats.seed_summary([0.9])["std"] is None  # one seed has no spread to state (report.json's null)
    assert [
        stats.format_p(p) for p in (3e-9, 2.5e-4, 0.0056, 0.0344, 0.5, 0.04996, 0.049996, 0.0501, 0.05, 0.0011)
    ] == [
        "p < 1e-6",
        "p = 0.00025",
        "p = 0.006",  # from 0.001 up: three decimals
        "p = 0.034",
        "p = 0.500",
        "p = 0.04996",  # below 0.05: never printed as 0.050
        "p = 0.049996",
        "p = 0.0501",  # above it: never printed on it either
        "p = 0.050",
        "p = 0.0011",
    ]
    assert [stats.p_text(p, ".2g") for p in (0.0496, 0.2, 0.00996)] == ["0.0496", "0.2", "0.00996"]
    with pytest.raises(ValueError, match="different images"):
        stats.mcnemar(np.ones(3, bool), np.ones(4, bool))
    # A bound on several p-values is rounded up, never down, and still never onto or across a level.
    upper = [stats.format_p(p, upper=True) for p in (0.0304, 0.030, 0.04951, 0.0496, 0.0100001, 2.41e-4, 3e-9)]
    assert upper == ["p ≤ 0.031", "p ≤ 0.030", "p ≤ 0.0496", "p ≤ 0.0496", "p ≤ 0.011", "p ≤ 0.00025", "p < 1e-6"]


def test_holm_matches_its_worked_example_and_bounds_the_chance_of_any_false_call():
    """Holm (1979): the i-th smallest of m p-values times (m - i + 1), made non-decreasing in that order, at most 1;
    the order given is kept. By simulation, with every null hypothesis true, calling those below 0.05 errs in at
    most 5% of the families, where calling the raw p-values below 0.05 errs in far more."""
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0] and stats.holm([0.2]) == [0.2] and stats.holm([]) == []
    rng = np.random.default_rng(0)
    p_values = rng.random((4000, 6))  # 6 true null hypotheses per family: uniform p-values
    adjusted = np.array([stats.holm(row) for row in p_values])
    assert np.all(adjusted >= p_values)
    any_false_call, raw_false_call = np.mean((adjusted < 0.05).any(1)), np.mean((p_values < 0.05).any(1))
    assert any_false_call <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 4000) and raw_false_call > 0.2  # 1 - 0.95^6 = 0.26
