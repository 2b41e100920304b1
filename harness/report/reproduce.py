"""Do two runs of one comparison agree? What each run found, and where two runs contradict.

A run's findings are what its verdict sentence asserts on test R@1: the arm with the highest mean,
the pairs of arms a Holm-adjusted test separates (higher, lower), and the arms above or below the
untrained baseline. Two runs *contradict* where one asserts what the other's assertion excludes: a
pair separated in opposite directions, an arm best in one run and significantly below another arm
in the other, an arm above the baseline in one and below it in the other. A pair separated in one
run and not in the other is no contradiction (the second run could not tell), and is listed apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

ALPHA = 0.05


@dataclass(frozen=True)
class Findings:
    best: str
    greater: frozenset[tuple[str, str]]  # (higher, lower), Holm-adjusted p < ALPHA
    above: frozenset[str]  # above the untrained baseline
    below: frozenset[str]


def findings(test: pd.DataFrame, comparisons: pd.DataFrame, metric: str = "recall@1") -> Findings:
    """From a comparison's ``test.csv`` and ``comparisons.csv``."""
    arms = test[test["kind"] == "arm"]
    best = str(arms.loc[arms[f"test_{metric}"].idxmax(), "config"])
    rows = comparisons[(comparisons["metric"] == metric) & (comparisons["p_holm"] < ALPHA)]
    pairs = rows[rows["family"] == "pair"]
    greater = frozenset(
        (str(r["config"]), str(r["versus"])) if r["difference"] > 0 else (str(r["versus"]), str(r["config"]))
        for _, r in pairs.iterrows()
    )
    vs = rows[rows["family"] == "vs baseline"]
    return Findings(
        best,
        greater,
        frozenset(str(r["config"]) for _, r in vs.iterrows() if r["low"] > 0),
        frozenset(str(r["config"]) for _, r in vs.iterrows() if r["high"] < 0),
    )


def contradictions(a: Findings, b: Findings) -> list[str]:
    """Every assertion of one run that the other run's findings exclude (empty: they agree)."""
    out = [
        f"{x} > {y} in the first run, {y} > {x} in the second"
        for x, y in sorted(a.greater)
        if (y, x) in b.greater
    ]
    for first, second, which in ((a, b, "first"), (b, a, "second")):
        other = "second" if which == "first" else "first"
        out += [
            f"{first.best} is best in the {which} run and below {x} in the {other}"
            for x, y in sorted(second.greater)
            if y == first.best
        ]
    out += [
        f"{x} is above the baseline in the first run and below it in the second"
        for x in sorted(a.above & b.below)
    ]
    out += [
        f"{x} is below the baseline in the first run and above it in the second"
        for x in sorted(a.below & b.above)
    ]
    return out


def side_by_side(a: Findings, b: Findings) -> pd.DataFrame:
    """Each finding of either run, and whether the other run asserts it too."""
    rows = [{"finding": "best arm on test", "first": a.best, "second": b.best}]
    for x, y in sorted(a.greater | b.greater):
        rows.append(
            {"finding": f"{x} > {y}", "first": _said((x, y), a.greater), "second": _said((x, y), b.greater)}
        )
    for x in sorted(a.above | b.above):
        rows.append(
            {"finding": f"{x} above baseline", "first": _said(x, a.above), "second": _said(x, b.above)}
        )
    for x in sorted(a.below | b.below):
        rows.append(
            {"finding": f"{x} below baseline", "first": _said(x, a.below), "second": _said(x, b.below)}
        )
    return pd.DataFrame(rows)


def _said(item: object, found: frozenset) -> str:
    return "yes" if item in found else "–"
