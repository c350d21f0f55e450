"""Statistics of a study: bootstrap CIs across seeds, paired permutation tests against the control, Holm.

* :func:`bootstrap_ci`: the percentile bootstrap 95% CI of the mean (Efron & Tibshirani 1993, ch. 13).
* :func:`paired_comparison`: variant minus control on the seeds both ran (the same seed means the
  same LoRA init, data order and noise, so the pairs share their luck): the mean difference, its
  bootstrap CI, Cohen's d_z = mean(d) / sd(d) (Cohen 1988; ``d_z`` of paired samples) and the
  two-sided sign-flip permutation p-value (Fisher's randomization test; exact over all 2^n sign
  flips for n <= 16, else Monte Carlo with the observed flip counted, Phipson & Smyth 2010).
* :func:`holm`: Holm's step-down adjustment (Holm 1979) over every (variant, metric) comparison of
  the study, controlling the family-wise error rate at ``alpha``.

With n seeds the exact sign-flip test cannot give p below 2 / 2^n (0.5 with 2 seeds, 0.0625 with 5):
:func:`smallest_p` says so, and the report states it next to each verdict.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np

EXACT_MAX_N = 16  # 2^16 sign patterns enumerated; above, Monte Carlo
N_BOOT = 10_000
N_PERM = 20_000


def bootstrap_ci(values, *, level: float = 0.95, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (one value: a zero-width interval)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)  # (n_boot,)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)


def sign_flip_p(d, *, n_perm: int = N_PERM, seed: int = 0) -> float:
    """Two-sided p of the paired sign-flip test: share of sign patterns with |mean| >= the observed |mean|."""
    d = np.asarray(d, dtype=np.float64)
    n = len(d)
    if n == 0:
        return math.nan
    observed = abs(d.mean())
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))  # ties at the observed value count as extreme
    if n <= EXACT_MAX_N:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))  # (2^n, n)
        return float(np.mean(np.abs(signs @ d / n) >= observed - tol))
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(n_perm, n))
    extreme = int(np.sum(np.abs(signs @ d / n) >= observed - tol))
    return (extreme + 1) / (n_perm + 1)


def smallest_p(n: int) -> float:
    """The smallest two-sided p the exact sign-flip test can give with ``n`` pairs."""
    return 2.0 / 2**n if n > 0 else math.nan


def cohens_dz(d) -> float:
    """Mean difference over the standard deviation of the differences (ddof 1); nan below 2 pairs."""
    d = np.asarray(d, dtype=np.float64)
    if len(d) < 2:
        return math.nan
    sd = d.std(ddof=1)
    if sd == 0:
        return math.inf * np.sign(d.mean()) if d.mean() != 0 else 0.0
    return float(d.mean() / sd)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order: max over k <= rank of (m - k) * p_(k), capped at 1."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


@dataclass
class Summary:
    """Mean and bootstrap CI of one metric of one variant across its seeds."""

    n: int
    mean: float
    ci_low: float
    ci_high: float


@dataclass
class Comparison:
    """A variant against the control on one metric, over the seeds both ran."""

    n: int
    diff: float
    ci_low: float
    ci_high: float
    d_z: float
    p: float
    p_holm: float = math.nan
    smallest_p: float = math.nan

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(values) -> Summary:
    lo, hi = bootstrap_ci(values)
    return Summary(len(values), float(np.mean(values)) if len(values) else math.nan, lo, hi)


def paired_comparison(variant: dict[int, float], control: dict[int, float]) -> Comparison:
    """``variant`` minus ``control`` on their common seeds (seed -> value)."""
    seeds = sorted(set(variant) & set(control))
    d = np.array([variant[s] - control[s] for s in seeds], dtype=np.float64)
    lo, hi = bootstrap_ci(d)
    return Comparison(len(d), float(d.mean()) if len(d) else math.nan, lo, hi, cohens_dz(d), sign_flip_p(d),
                      smallest_p=smallest_p(len(d)))  # fmt: skip
