"""Is each arm's best stable across the sampler's draws? (issue #15)

    .venv/bin/python bench/arm_stability.py studies/cub-compare.yaml \
        studies/stability/cub-compare-sampler*.yaml

The same comparison run with other sampler seeds (every config identical but ``sampler.seed``):
per arm, the best validation R@1 each seed's search found, the config it chose, and the spread of
those bests; against it, the spread between the arms. With the test results of each run (``harness
evaluate``), the same for the chosen configs' test R@1, and whether the verdict (which arm is best,
which pairs differ after Holm) is the same for every seed.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import pandas as pd

from harness.study.arms import arm_configs
from harness.study.config import load_config
from harness.study.identity import load_study


def bests(path: str) -> tuple[str, dict[str, tuple[float, dict]], pd.DataFrame | None]:
    cfg = load_config(path)
    out = {}
    for a in arm_configs(cfg):
        done = [t for t in load_study(a).trials if t.value is not None and t.state.name == "COMPLETE"]
        best = max(done, key=lambda t: (t.value, -t.number))
        out[str(a.arm)] = (float(best.value or 0), best.params)
    test_path = cfg.study_dir / "test.csv"
    test = pd.read_csv(test_path) if test_path.is_file() else None
    return f"seed {cfg.sampler.seed}", out, test


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="+")
    runs = [bests(p) for p in ap.parse_args().configs]
    arms = list(runs[0][1])
    print("best validation R@1 per arm and sampler seed (the config chosen: distance, margin, trunk lr, P)")
    spreads = []
    for arm in arms:
        vals = [r[1][arm][0] for r in runs]
        spreads.append(max(vals) - min(vals))
        picks = "; ".join(
            f"{label}: {v:.4f} ({p.get('distance', '-')}, m={p.get('margin', float('nan')):.2f},"
            f" tlr={p.get('trunk_lr', float('nan')):.1e}, P={p.get('batch_p', '-')})"
            for label, (v, p) in ((r[0], r[1][arm]) for r in runs)
        )
        print(f"  {arm:18s} spread {max(vals) - min(vals):.4f}   {picks}")
    means = {arm: statistics.mean(r[1][arm][0] for r in runs) for arm in arms}
    print(
        f"spread across seeds: mean {statistics.mean(spreads):.4f}, max {max(spreads):.4f};"
        f" between arms (mean over seeds): {min(means.values()):.4f}-{max(means.values()):.4f}"
    )
    order = [sorted(arms, key=lambda a, r=r: -r[1][a][0]) for r in runs]
    print("arms by best validation R@1, per seed:", " | ".join(", ".join(o) for o in order))
    tests = [(r[0], r[2]) for r in runs if r[2] is not None]
    if tests:
        print("test R@1 of each arm's chosen config (mean over evaluation seeds), per sampler seed:")
        for arm in arms:
            row = [float(t.loc[t["config"] == arm, "test_recall@1"].iloc[0]) for _, t in tests]
            print(
                f"  {arm:18s} "
                + "  ".join(f"{label}: {v:.4f}" for (label, _), v in zip(tests, row, strict=True))
            )


if __name__ == "__main__":
    sys.exit(main())
