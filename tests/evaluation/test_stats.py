"""Confidence intervals and paired comparisons used by the final evaluation and the report."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from harness.evaluation.metrics import per_query_scores, retrieval_metrics
from harness.evaluation.stats import bootstrap_interval, paired_bootstrap, paired_t, t_interval


def test_t_interval_matches_scipy() -> None:
    x = [0.61, 0.64, 0.60]
    ci = t_interval(x)
    low, high = st.t.interval(0.95, 2, loc=np.mean(x), scale=st.sem(x))
    assert ci.mean == pytest.approx(np.mean(x)) and ci.n == 3
    assert (ci.low, ci.high) == pytest.approx((low, high))


def test_t_interval_single_value_has_no_interval() -> None:
    ci = t_interval([0.5])
    assert ci.mean == 0.5 and math.isnan(ci.low) and math.isnan(ci.high) and ci.method == "single value"


def test_t_interval_covers_the_true_mean_about_95_percent() -> None:
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(2000):
        ci = t_interval(rng.normal(0.5, 0.02, size=3))
        covered += ci.low <= 0.5 <= ci.high
    assert 0.93 < covered / 2000 < 0.97


def test_bootstrap_interval_of_a_proportion() -> None:
    rng = np.random.default_rng(1)
    hits = (rng.random(4000) < 0.3).astype(float)
    ci = bootstrap_interval(hits, seed=0)
    se = math.sqrt(0.3 * 0.7 / 4000)
    assert ci.low < hits.mean() < ci.high
    assert ci.half_width == pytest.approx(1.96 * se, rel=0.15)  # the normal approximation


def test_paired_t_matches_scipy_and_orders_the_difference() -> None:
    a, b = [0.62, 0.65, 0.61], [0.58, 0.60, 0.59]
    c = paired_t(a, b)
    assert c.diff == pytest.approx(np.mean(np.subtract(a, b)))
    assert c.p_value == pytest.approx(st.ttest_rel(a, b).pvalue)
    assert c.low < c.diff < c.high and c.n == 3
    assert paired_t(b, a).diff == pytest.approx(-c.diff)


def test_paired_bootstrap_finds_a_real_difference_and_not_a_null_one() -> None:
    rng = np.random.default_rng(2)
    base = (rng.random(3000) < 0.5).astype(float)
    better = np.maximum(base, (rng.random(3000) < 0.1).astype(float))  # ~5 points more hits, paired
    real = paired_bootstrap(better, base, seed=0)
    assert real.diff > 0 and real.low > 0 and real.p_value < 0.01
    same = paired_bootstrap(base, base.copy(), seed=0)
    assert same.diff == 0 and same.p_value == 1.0


def test_per_query_scores_average_to_the_metrics() -> None:
    rng = np.random.default_rng(3)
    import torch

    emb = torch.from_numpy(rng.normal(size=(60, 8)).astype(np.float32))
    labels = np.repeat(np.arange(12), 5)
    scores = per_query_scores(emb, labels, "euclidean")
    metrics = retrieval_metrics(emb, labels, "euclidean", nmi=False)
    assert set(scores) == set(metrics)
    for k, v in scores.items():
        assert v.shape == (60,) and v.mean() == pytest.approx(metrics[k])


def test_paired_bootstrap_p_values_hold_their_level_under_the_null() -> None:
    """Per-query differences with mean zero: p < 0.05 in about 5 % of studies, not far more."""
    rng = np.random.default_rng(4)
    ps = []
    for i in range(300):
        a = (rng.random(300) < 0.5).astype(float)
        b = (rng.random(300) < 0.5).astype(float)  # same hit rate, independent misses: true diff 0
        ps.append(paired_bootstrap(a, b, n_boot=400, seed=i).p_value)
    rate = float(np.mean(np.asarray(ps) < 0.05))
    assert 0.01 <= rate <= 0.10, rate
