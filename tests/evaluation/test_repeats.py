"""The interval model over search repeats x seeds, on simulated data with known variance components."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.evaluation import repeats as R


def simulate(rng, mu, var_search, var_seed, n_rep, n_seeds):
    """y[a, r, s] = mu[a] + u[a, r] + e[a, r, s], the model the intervals assume."""
    out = {}
    for i, m in enumerate(mu):
        u = rng.normal(0.0, math.sqrt(var_search), size=(n_rep, 1))
        e = rng.normal(0.0, math.sqrt(var_seed), size=(n_rep, n_seeds))
        out[f"arm{i}"] = m + u + e
    return out


def test_components_are_recovered_on_average():
    rng = np.random.default_rng(0)
    vs, ve = 4e-4, 2.5e-5
    fits = [R.fit(simulate(rng, np.linspace(0.3, 0.4, 20), vs, ve, 6, 4)) for _ in range(300)]
    assert np.mean([f.var_search for f in fits]) == pytest.approx(vs, rel=0.06)
    assert np.mean([f.var_seed for f in fits]) == pytest.approx(ve, rel=0.03)
    # no search variance: the estimate sits at (or near) zero, never below
    flat = [R.fit(simulate(rng, [0.3] * 6, 0.0, ve, 3, 3)) for _ in range(200)]
    assert min(f.var_search for f in flat) == 0.0
    assert np.mean([f.var_search for f in flat]) < 0.1 * ve


def coverage(interval, var_search, n=2000, seed=1):
    rng = np.random.default_rng(seed)
    mu = np.array([0.30, 0.31, 0.33, 0.32, 0.35, 0.30])
    hits = 0
    for _ in range(n):
        c = R.fit(simulate(rng, mu, var_search, 9e-6, 2, 3))
        for i, a in enumerate(c.arms):
            ci = interval(c, a)
            hits += ci.low <= mu[i] <= ci.high
    return hits / (n * len(mu))


def test_the_arm_interval_covers_at_its_level_with_two_repeats():
    """R = 2, S = 3, 6 arms (make compare's shape), the search's variance 10x the seeds'."""
    assert 0.935 <= coverage(R.arm_interval, 1e-4) <= 0.965


def test_the_within_search_interval_misses_the_search():
    """What a single search's report prints: far below its level once the search varies."""
    assert coverage(R.within_interval, 1e-4) < 0.6
    assert 0.93 <= coverage(R.within_interval, 0.0, n=1000) <= 0.97  # right when the search does not


def test_differences_hold_their_error_rate_and_find_real_ones():
    rng = np.random.default_rng(2)
    null = [
        R.difference(R.fit(simulate(rng, [0.3] * 6, 1e-4, 9e-6, 2, 3)), "arm0", "arm1") for _ in range(3000)
    ]
    rate = np.mean([c.p_value < 0.05 for c in null])
    assert 0.04 <= rate <= 0.06
    real = [
        R.difference(R.fit(simulate(rng, [0.34, 0.30, 0.3, 0.3, 0.3, 0.3], 1e-4, 9e-6, 2, 3)), "arm0", "arm1")
        for _ in range(500)
    ]
    assert np.mean([c.p_value < 0.05 for c in real]) > 0.8
    c = real[0]
    assert c.low < c.diff < c.high and c.method == R.METHOD


def test_against_a_fixed_value():
    c = R.fit({"a": np.array([[0.40, 0.41], [0.42, 0.43]]), "b": np.array([[0.30, 0.30], [0.31, 0.31]])})
    d = R.against(c, "a", 0.30)
    assert d.diff == pytest.approx(0.415 - 0.30)
    assert d.high - d.low == pytest.approx(2 * R._t(0.95, c.df_between) * math.sqrt(c.var_mean))
    assert d.p_value < 0.05


def test_a_worked_example():
    """By hand: two arms, 2 repeats x 2 seeds."""
    c = R.fit({"a": np.array([[1.0, 3.0], [5.0, 7.0]]), "b": np.array([[0.0, 0.0], [2.0, 2.0]])})
    # repeat means a: 2, 6 (mean 4); b: 0, 2 (mean 1); SS_b = 2 * (4 + 4 + 1 + 1) = 20, df 2
    assert c.ms_between == pytest.approx(10.0)
    # SS_w: a: 1+1+1+1 = 4, b: 0; df = 2 * 2 * 1 = 4
    assert c.ms_within == pytest.approx(1.0)
    assert c.var_search == pytest.approx((10.0 - 1.0) / 2)
    assert c.var_mean == pytest.approx(10.0 / 4)
    assert (c.df_between, c.df_within) == (2, 4)
    ci = R.arm_interval(c, "a")
    assert (ci.mean, ci.high - ci.mean) == pytest.approx((4.0, 4.302652729 * math.sqrt(2.5)))


def test_rank_first():
    rng = np.random.default_rng(3)
    apart = R.fit(simulate(rng, [0.5, 0.3, 0.3], 1e-5, 1e-6, 2, 3))
    p = R.rank_first(apart, n_boot=2000)
    assert sum(p.values()) == pytest.approx(1.0)
    assert p["arm0"] > 0.999
    same = R.fit({f"arm{i}": np.array([[0.3, 0.31], [0.32, 0.29]]) + 0 * i for i in range(4)})
    p = R.rank_first(same, n_boot=20_000)
    assert all(v == pytest.approx(0.25, abs=0.02) for v in p.values())
    assert R.rank_first(same, n_boot=500, seed=7) == R.rank_first(same, n_boot=500, seed=7)


def test_fit_refuses_what_it_cannot_estimate():
    with pytest.raises(ValueError, match="at least 2 search repeats"):
        R.fit({"a": np.ones((1, 3)), "b": np.ones((1, 3))})
    with pytest.raises(ValueError, match="same repeats x seeds"):
        R.fit({"a": np.ones((2, 3)), "b": np.ones((3, 3))})
    with pytest.raises(ValueError, match="arm a"):
        R.fit({"a": np.array([[1.0, np.nan], [1.0, 1.0]]), "b": np.ones((2, 2))})


def test_rank_agreement():
    assert R.rank_agreement([1, 2, 3, 4], [10, 20, 30, 40])[0] == pytest.approx(1.0)
    assert R.rank_agreement([1, 2, 3, 4], [4, 3, 2, 1])[0] == pytest.approx(-1.0)
    rho, p, n = R.rank_agreement([1, 2], [1, 2])
    assert math.isnan(rho) and math.isnan(p) and n == 2
    assert R.rank_agreement([1, 2, float("nan"), 4], [1, 2, 3, 4])[2] == 3
