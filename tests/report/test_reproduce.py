"""Two runs of a comparison: their findings, and the contradictions between them (issue #23)."""

from __future__ import annotations

import pandas as pd

from harness.report.reproduce import Findings, contradictions, findings, side_by_side


def run(
    means: dict[str, float], pairs: list[tuple[str, str, float, float]], vs: dict[str, tuple]
) -> Findings:
    """``pairs``: (config, versus, difference, p_holm); ``vs``: arm -> (low, high, p_holm)."""
    test = pd.DataFrame(
        [{"kind": "arm", "config": a, "test_recall@1": m} for a, m in means.items()]
        + [{"kind": "baseline", "config": "baseline", "test_recall@1": 0.1}]
    )
    rows = [
        {"family": "pair", "metric": "recall@1", "config": c, "versus": v, "difference": d, "p_holm": p}
        | {"low": d - 0.01, "high": d + 0.01}
        for c, v, d, p in pairs
    ]
    rows += [
        {"family": "vs baseline", "metric": "recall@1", "config": a, "versus": "baseline", "difference": 0.0}
        | {"low": lo, "high": hi, "p_holm": p}
        for a, (lo, hi, p) in vs.items()
    ]
    rows.append(  # another metric's pairs are not R@1 findings
        {"family": "pair", "metric": "map@r", "config": "a", "versus": "b", "difference": -1.0, "p_holm": 0.0}
    )
    return findings(test, pd.DataFrame(rows))


def test_findings_read_the_best_arm_the_separated_pairs_and_the_baseline() -> None:
    f = run(
        {"a": 0.5, "b": 0.4, "c": 0.45},
        [("a", "b", 0.1, 0.01), ("b", "c", -0.05, 0.02), ("a", "c", 0.05, 0.2)],
        {"a": (0.1, 0.2, 0.01), "b": (-0.2, -0.1, 0.01), "c": (-0.1, 0.1, 0.5)},
    )
    assert f == Findings("a", frozenset({("a", "b"), ("c", "b")}), frozenset({"a"}), frozenset({"b"}))


def test_agreeing_runs_have_no_contradiction_and_a_pair_one_run_cannot_tell_is_none() -> None:
    one = run({"a": 0.5, "b": 0.4}, [("a", "b", 0.1, 0.01)], {"a": (0.1, 0.2, 0.01)})
    two = run({"a": 0.5, "b": 0.45}, [("a", "b", 0.05, 0.3)], {"a": (-0.1, 0.2, 0.2)})
    assert contradictions(one, two) == []
    table = side_by_side(one, two).set_index("finding")
    assert table.loc["a > b"].tolist() == ["yes", "–"]
    assert table.loc["best arm on test"].tolist() == ["a", "a"]


def test_opposite_pairs_a_best_arm_beaten_and_a_flipped_baseline_contradict() -> None:
    one = run({"a": 0.5, "b": 0.4, "c": 0.3}, [("a", "b", 0.1, 0.01)], {"c": (0.1, 0.2, 0.01)})
    two = run(
        {"a": 0.3, "b": 0.5, "c": 0.4},
        [("a", "b", -0.2, 0.01), ("c", "a", 0.1, 0.04)],
        {"c": (-0.2, -0.1, 0.01)},
    )
    found = contradictions(one, two)
    assert "a > b in the first run, b > a in the second" in found
    assert "a is best in the first run and below b in the second" in found
    assert "a is best in the first run and below c in the second" in found
    assert "b is best in the second run and below a in the first" in found
    assert "c is above the baseline in the first run and below it in the second" in found
    assert len(found) == 5
    assert contradictions(two, one) != []  # symmetric in substance
