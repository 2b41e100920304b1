"""Which trunk setting shows differences between mining strategies above seed noise? (issue #15)

    .venv/bin/python bench/choose_trunk.py studies/choose/cub-choose-*.yaml

Each config is a comparison (``compare: mining``) whose search space fixes everything but the arm,
with ``n_trials`` = 3: every arm's trials are one recipe with 3 seeds, scored on VALIDATION classes
only (run them with ``harness study run --config``; no test class is read). Prints, per setting, each
strategy's mean and s.d. over seeds, the spread between strategies against the spread between seeds
(a one-way ANOVA F and its p), and the mean trial time.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from scipy import stats

from harness.study.arms import arm_configs
from harness.study.config import load_config
from harness.study.identity import load_study


def setting(cfg) -> str:  # noqa: ANN001 (a StudyConfig)
    if cfg.trunk == "partial":
        return f"partial, train_blocks {cfg.search_space.fixed.get('train_blocks')}"
    return cfg.trunk


def summarise(path: str) -> list[str]:
    cfg = load_config(path)
    groups, lines, secs = {}, [], []
    for a in arm_configs(cfg):
        trials = [t for t in load_study(a).trials if t.value is not None]
        groups[a.arm] = [float(t.value) for t in trials]
        secs += [t.duration.total_seconds() for t in trials if t.duration]
    means = {k: statistics.mean(v) for k, v in groups.items()}
    within = statistics.mean(statistics.stdev(v) for v in groups.values() if len(v) > 1)
    f, p = stats.f_oneway(*groups.values())
    lines.append(
        f"{cfg.name} ({setting(cfg)}):"
        f" strategies span {min(means.values()):.4f}-{max(means.values()):.4f} (s.d. of means"
        f" {statistics.stdev(means.values()):.4f}), seeds s.d. {within:.4f}; ANOVA F = {f:.1f}, p = {p:.2g};"
        f" {statistics.mean(secs):.1f} s per trial"
    )
    for arm, v in sorted(groups.items(), key=lambda kv: -means[kv[0]]):
        lines.append(
            f"  {arm:18s} {means[arm]:.4f} +- {statistics.stdev(v):.4f}  ({', '.join(f'{x:.4f}' for x in v)})"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="+")
    for path in ap.parse_args().configs:
        print("\n".join(summarise(path)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
