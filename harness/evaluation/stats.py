"""Uncertainty for retrieval results: t-intervals over seeds, bootstrap over queries, paired tests.

Seeds are the unit of replication when a config is re-trained k times (k >= 2): mean ± t-interval,
and a paired t-test between two configs trained with the same seeds. With one seed, queries are
the unit: a percentile bootstrap over test queries, paired when comparing two configs (the same
queries scored by both).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as st


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int
    method: str  # "t over seeds" | "bootstrap over queries" | "single value"

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def t_interval(values: np.ndarray | list[float], confidence: float = 0.95) -> Interval:
    """Mean and two-sided t confidence interval; a single value has no interval (NaN bounds)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "single value")
    m = float(x.mean())
    if len(x) < 2:
        return Interval(m, math.nan, math.nan, 1, "single value")
    half = float(st.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return Interval(m, m - half, m + half, len(x), "t over seeds")


def bootstrap_interval(
    per_query: np.ndarray, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> Interval:
    """Percentile bootstrap of the mean over queries."""
    x = np.asarray(per_query, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = _boot_means(x, rng, n_boot)
    a = (1 - confidence) / 2
    return Interval(
        float(x.mean()),
        float(np.quantile(means, a)),
        float(np.quantile(means, 1 - a)),
        len(x),
        "bootstrap over queries",
    )


def _boot_means(x: np.ndarray, rng: np.random.Generator, n_boot: int, block: int = 200) -> np.ndarray:
    out = []
    for start in range(0, n_boot, block):  # bounded memory: block x len(x) indices at a time
        idx = rng.integers(0, len(x), size=(min(block, n_boot - start), len(x)))
        out.append(x[idx].mean(axis=1))
    return np.concatenate(out)


@dataclass(frozen=True)
class Comparison:
    diff: float  # mean of a - b
    low: float
    high: float
    p_value: float
    n: int
    method: str  # "paired t over seeds" | "paired bootstrap over queries"


def paired_t(
    a: np.ndarray | list[float], b: np.ndarray | list[float], confidence: float = 0.95
) -> Comparison:
    """a - b paired by seed: mean difference, its t-interval and the two-sided paired t-test p-value."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {len(x)} vs {len(y)}")
    d = x - y
    ci = t_interval(d, confidence)
    if len(d) < 2:
        p = math.nan
    elif np.allclose(d, d[0], rtol=0.0, atol=1e-12):
        p = math.nan  # identical differences on every seed: no variance, the t-test is undefined
    else:
        p = float(st.ttest_rel(x, y).pvalue)
    return Comparison(ci.mean, ci.low, ci.high, p, len(d), "paired t over seeds")


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> Comparison:
    """a - b paired by query: percentile interval of the mean difference, and a two-sided p-value
    from the bootstrap distribution shifted to the null (mean difference 0)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = _boot_means(d, rng, n_boot)
    obs = float(d.mean())
    alpha = (1 - confidence) / 2
    p = float(((np.abs(means - obs) >= abs(obs) - 1e-12).sum() + 1) / (n_boot + 1))
    return Comparison(
        obs,
        float(np.quantile(means, alpha)),
        float(np.quantile(means, 1 - alpha)),
        min(p, 1.0),
        len(d),
        "paired bootstrap over queries",
    )


def holm(p_values: list[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (family-wise error control, no
    independence assumed): sorted ascending, the i-th (from 0) of m is multiplied by m - i, made
    monotone, and capped at 1. NaN p-values (an undefined test) stay NaN and are not counted in m."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[j]))
        out[j] = running
    return out
