"""Uncertainty that covers the search itself: arms searched R times, each repeat's best re-trained
with the same S seeds.

The model (a linear mixed model, balanced, fitted by the ANOVA estimators, which are REML's here
when positive): the test metric of arm a, search repeat r, seed s is

    y[a, r, s] = mu[a] + u[a, r] + e[a, r, s],    u ~ N(0, var_search),  e ~ N(0, var_seed),

with arms as fixed effects and the two variance components shared by the arms of one comparison
(the same search space, budget and split; what the search's randomness does is pooled over arms
so that R = 2 repeats still give A (R - 1) degrees of freedom). ``var_search`` is what another
sampler stream changes (another config chosen), ``var_seed`` what re-training the chosen config
with another seed changes.

- An arm's interval: its mean over repeats and seeds, with variance (var_search + var_seed / S) / R,
  estimated by the pooled between-repeat mean square MS_b / (R S), and a t with A (R - 1) degrees
  of freedom (exact for the balanced model).
- The within-search interval beside it: what the seeds alone say (MS_w of the arm, t with
  R (S - 1) degrees of freedom), the interval a single search's report would print.
- Two arms' difference: standard error sqrt(2 MS_b / (R S)), t with A (R - 1) degrees of freedom;
  against a fixed value (the untrained baseline, one deterministic run): sqrt(MS_b / (R S)).
- P(rank 1): a parametric bootstrap from the fitted components, how often each arm's mean comes
  out highest when the whole protocol (R searches, S seeds each) is run again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

from harness.evaluation.stats import Comparison, Interval

METHOD = "t over search repeats x seeds (mixed model, pooled variance components)"


@dataclass(frozen=True)
class Components:
    """A fitted comparison: per-arm means and within mean squares, and the pooled components."""

    arms: tuple[str, ...]
    means: dict[str, float]  # mean over repeats and seeds
    ms_within_arm: dict[str, float]  # each arm's own seed mean square
    repeats: int  # R
    seeds: int  # S
    ms_between: float  # pooled over arms: S * sum_r (repeat mean - arm mean)^2 / (A (R - 1))
    ms_within: float  # pooled over arms and repeats: the seeds' mean square
    df_between: int
    df_within: int

    @property
    def var_seed(self) -> float:
        return self.ms_within

    @property
    def var_search(self) -> float:
        """The search's own variance (truncated at 0, as the ANOVA/REML estimate is)."""
        return max(0.0, (self.ms_between - self.ms_within) / self.seeds)

    @property
    def var_mean(self) -> float:
        """The variance of an arm's mean over its R repeats x S seeds."""
        return self.ms_between / (self.repeats * self.seeds)


def fit(values: dict[str, np.ndarray]) -> Components:
    """``values``: per arm, an array (R repeats, S seeds) of one metric; every arm the same shape,
    R >= 2 (else there is no between-repeat variance to estimate)."""
    arms = tuple(values)
    shapes = {np.asarray(v).shape for v in values.values()}
    if len(shapes) != 1:
        raise ValueError(f"every arm needs the same repeats x seeds; got {sorted(shapes)}")
    (shape,) = shapes
    if len(shape) != 2 or shape[0] < 2 or shape[1] < 1:
        raise ValueError(f"need at least 2 search repeats of at least 1 seed each; got {shape}")
    r, s = shape
    ss_b = ss_w = 0.0
    means, ms_arm = {}, {}
    for a in arms:
        y = np.asarray(values[a], dtype=np.float64)
        if not np.isfinite(y).all():
            raise ValueError(f"arm {a}: a missing or non-finite value")
        rep = y.mean(axis=1)
        means[a] = float(rep.mean())
        ss_b += s * float(((rep - rep.mean()) ** 2).sum())
        w = float(((y - rep[:, None]) ** 2).sum())
        ss_w += w
        ms_arm[a] = w / (r * (s - 1)) if s > 1 else math.nan
    df_b = len(arms) * (r - 1)
    df_w = len(arms) * r * (s - 1)
    return Components(
        arms,
        means,
        ms_arm,
        r,
        s,
        ss_b / df_b,
        ss_w / df_w if df_w else math.nan,
        df_b,
        df_w,
    )


def arm_interval(c: Components, arm: str, confidence: float = 0.95) -> Interval:
    """The arm's mean with an interval over search repeats x seeds."""
    half = _t(confidence, c.df_between) * math.sqrt(c.var_mean)
    m = c.means[arm]
    return Interval(m, m - half, m + half, c.repeats * c.seeds, METHOD)


def within_interval(c: Components, arm: str, confidence: float = 0.95) -> Interval:
    """The same mean with the seeds' interval alone (the search taken as fixed)."""
    m, ms = c.means[arm], c.ms_within_arm[arm]
    n = c.repeats * c.seeds
    if not math.isfinite(ms):
        return Interval(m, math.nan, math.nan, n, "single value")
    half = _t(confidence, c.repeats * (c.seeds - 1)) * math.sqrt(ms / n)
    return Interval(m, m - half, m + half, n, "t over seeds within each search")


def difference(c: Components, a: str, b: str, confidence: float = 0.95) -> Comparison:
    """Arm a minus arm b, with the search's variance in its standard error."""
    return _test(c.means[a] - c.means[b], math.sqrt(2 * c.var_mean), c, confidence)


def against(c: Components, a: str, value: float, confidence: float = 0.95) -> Comparison:
    """Arm a minus a fixed value (one deterministic run, such as the untrained backbone)."""
    return _test(c.means[a] - value, math.sqrt(c.var_mean), c, confidence)


def _test(diff: float, se: float, c: Components, confidence: float) -> Comparison:
    df = c.df_between
    half = _t(confidence, df) * se
    p = float(2 * st.t.sf(abs(diff) / se, df)) if se > 0 else math.nan
    return Comparison(diff, diff - half, diff + half, p, c.repeats * c.seeds, METHOD)


def rank_first(c: Components, n_boot: int = 10_000, seed: int = 0) -> dict[str, float]:
    """How often each arm's mean is the highest in a re-run of the protocol simulated from the
    fitted components (ties: split equally)."""
    rng = np.random.default_rng(seed)
    mu = np.array([c.means[a] for a in c.arms])
    sd = math.sqrt(c.var_search / c.repeats + c.var_seed / (c.repeats * c.seeds))
    draws = mu[None, :] + sd * rng.standard_normal((n_boot, len(mu)))
    top = draws == draws.max(axis=1, keepdims=True)
    share = (top / top.sum(axis=1, keepdims=True)).mean(axis=0)
    return {a: float(v) for a, v in zip(c.arms, share, strict=True)}


def _t(confidence: float, df: int) -> float:
    return float(st.t.ppf(0.5 + confidence / 2, df))


def rank_agreement(validation: list[float], test: list[float]) -> tuple[float, float, int]:
    """Spearman's rank correlation between validation and test over the same items, its two-sided
    p and the number of items (NaN below 3 items, or when one side is constant)."""
    v, t = np.asarray(validation, dtype=np.float64), np.asarray(test, dtype=np.float64)
    ok = np.isfinite(v) & np.isfinite(t)
    v, t = v[ok], t[ok]
    if len(v) < 3 or np.ptp(v) == 0 or np.ptp(t) == 0:
        return math.nan, math.nan, len(v)
    res = st.spearmanr(v, t)
    return float(res.statistic), float(res.pvalue), len(v)
