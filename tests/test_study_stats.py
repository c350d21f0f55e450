"""The study statistics against known cases: bootstrap coverage, the permutation test's size, Holm, d_z."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from sdxl_probe.studies import stats
from sdxl_probe.studies.report import verdict


def test_bootstrap_ci_covers_the_true_mean_near_95_percent():
    """Percentile-bootstrap CIs of the mean of N(3, 2^2) samples (n = 30) cover 3 in about 95% of 1000 draws.

    Oracle: the percentile bootstrap of a mean is mean +- z * s * sqrt((n-1)/n) / sqrt(n) to first order
    (Efron & Tibshirani 1993, ch. 13), so its coverage is P(|t_{n-1}| < z * sqrt((n-1)/n)) = 0.936 for
    n = 30 (scipy's t distribution); the tolerance is 3 binomial standard errors plus 0.01 of
    bootstrap Monte-Carlo error. It must also be within 0.03 of the nominal 0.95.
    """
    from scipy.stats import norm, t

    n, reps = 30, 1000
    rng = np.random.default_rng(1)
    covered = 0
    for i in range(reps):
        lo, hi = stats.bootstrap_ci(rng.normal(3.0, 2.0, size=n), n_boot=1000, seed=i)
        covered += lo <= 3.0 <= hi
    coverage = covered / reps
    z = norm.ppf(0.975)
    expected = 2 * t.cdf(z * math.sqrt((n - 1) / n), n - 1) - 1
    se = math.sqrt(expected * (1 - expected) / reps)
    print(f"bootstrap coverage {coverage:.3f} (theory {expected:.3f}, nominal 0.95)")
    assert abs(coverage - expected) < 3 * se + 0.01
    assert abs(coverage - 0.95) < 0.03


def test_sign_flip_false_positive_rate_under_the_null_is_alpha():
    """Under the null (paired differences ~ N(0, 1), n = 10), the exact test rejects at alpha = 0.05 in 4.9% of draws.

    Oracle: an exact randomization test on continuous symmetric data has size floor(alpha * 2^n / 2) * 2 / 2^n
    (p takes the values 2k / 2^n because s and -s give the same |mean|): 50 / 1024 = 0.0488 for n = 10;
    tolerance 3 binomial standard errors over 3000 draws.
    """
    n, reps, alpha = 10, 3000, 0.05
    rng = np.random.default_rng(2)
    rejections = sum(stats.sign_flip_p(rng.normal(size=n)) <= alpha for _ in range(reps))
    rate = rejections / reps
    size = math.floor(alpha * 2**n / 2) * 2 / 2**n
    se = math.sqrt(size * (1 - size) / reps)
    print(f"false-positive rate {rate:.4f} (exact size {size:.4f})")
    assert abs(rate - size) < 3 * se


def test_monte_carlo_sign_flip_false_positive_rate_is_at_most_alpha():
    """Above 16 pairs the test samples sign flips; under the null its rate stays near alpha (n = 20, 600 draws).

    Oracle: a Monte Carlo permutation p-value that counts the observed statistic, (b + 1) / (B + 1), is valid
    (Phipson & Smyth 2010): P(p <= alpha) <= alpha; tolerance 3 binomial standard errors above alpha.
    """
    reps, alpha = 600, 0.05
    rng = np.random.default_rng(3)
    rate = np.mean([stats.sign_flip_p(rng.normal(size=20), n_perm=999, seed=i) <= alpha for i in range(reps)])
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / reps)
    assert rate > 0.01  # not a test that never rejects


def test_sign_flip_p_matches_brute_force_enumeration():
    """p for hand-picked differences equals a loop over every sign pattern.

    Oracle: Fisher's randomization test written out with itertools and Python floats; and by hand, for
    differences all of one sign only the identity and the full flip reach |mean|: p = 2 / 2^n.
    """
    for d in ([0.5, -1.0, 2.0], [0.3, 0.1, -0.2, 0.4, -0.05], [1.0, -1.0]):
        observed = abs(sum(d) / len(d))
        hits = [abs(sum(s * x for s, x in zip(signs, d, strict=True)) / len(d)) >= observed - 1e-12
                for signs in itertools.product((1, -1), repeat=len(d))]  # fmt: skip
        assert stats.sign_flip_p(d) == pytest.approx(sum(hits) / len(hits))
    assert stats.sign_flip_p(np.arange(1.0, 11.0)) == pytest.approx(2 / 1024)
    assert stats.smallest_p(10) == pytest.approx(2 / 1024) and stats.smallest_p(2) == 0.5


def test_holm_adjustment_on_a_hand_worked_example():
    """Holm (1979) on p = (0.01, 0.04, 0.03, 0.005).

    Oracle, by hand: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04; the running
    maximum gives 0.02, 0.03, 0.06, 0.06; back in input order (0.03, 0.06, 0.06, 0.02). A large p caps at 1.
    """
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert stats.holm([0.02]) == pytest.approx([0.02])


def test_effect_size_and_paired_comparison_use_common_seeds():
    """d_z of (1, 2, 3) is mean 2 / sd 1 = 2; the comparison pairs only the seeds both ran.

    Oracle: the definitions, by hand: variant {0: 1, 1: 2, 2: 5} vs control {0: 0, 1: 1} pairs seeds 0 and 1,
    differences (1, 1): mean 1, zero spread, exact p 1 (every sign pattern of (1, 1) with |mean| >= 1 is
    the identity and the full flip: 2 of 4 = 0.5).
    """
    assert stats.cohens_dz([1.0, 2.0, 3.0]) == pytest.approx(2.0)
    c = stats.paired_comparison({0: 1.0, 1: 2.0, 2: 5.0}, {0: 0.0, 1: 1.0})
    assert (c.n, c.diff, c.ci_low, c.ci_high) == (2, 1.0, 1.0, 1.0)
    assert c.p == pytest.approx(0.5) and c.smallest_p == pytest.approx(0.5)
    one = stats.summarize([4.0])
    assert (one.n, one.mean, one.ci_low, one.ci_high) == (1, 4.0, 4.0, 4.0)


def test_verdict_words_follow_the_adjusted_p_and_the_metric_direction():
    """Plain-words verdicts: 'better'/'worse' by the metric's direction when Holm p < alpha, else no difference.

    Oracle: the wording rule stated in the study report (lower validation loss is better, higher adherence is
    better), applied to hand-made comparisons.
    """
    base = {"n": 8, "diff": -0.2, "ci_low": -0.3, "ci_high": -0.1, "d_z": -2.0, "p": 0.008, "smallest_p": 2 / 256}
    assert verdict("val_loss", "b", "a", base | {"p_holm": 0.01}, 0.05).startswith("b is better than a")
    assert verdict("caption_adherence", "b", "a", base | {"p_holm": 0.01}, 0.05).startswith("b is worse than a")
    text = verdict("caption_adherence", "b", "a", base | {"p_holm": 0.2}, 0.05)
    assert text.startswith("No detectable difference") and "-0.3 to -0.1" in text
    few = verdict("diversity", "b", "a", base | {"n": 2, "p": 0.5, "p_holm": 1.0, "smallest_p": 0.5}, 0.05)
    assert "no p below 0.5 is possible" in few
