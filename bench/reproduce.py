"""Does a comparison's verdict reproduce? Two runs of it with every seed changed, side by side.

    .venv/bin/python bench/reproduce.py studies/cub-compare.yaml studies/reproduce/cub-compare-seed1.yaml \
        [studies/cars-compare.yaml studies/reproduce/cars-compare-seed1.yaml ...]

Configs in pairs (the first run, the second), each evaluated (``make compare`` and ``make
compare-reproduce``). Per pair: both reports' verdict sentences; a table of every finding either run
asserts on test R@1 (the best arm, the pairs a Holm-adjusted test separates, the arms above or below
the untrained baseline) and whether the other asserts it too; and the contradictions between them
(harness.report.reproduce: opposite directions, a best arm significantly beaten, a flipped
baseline). Exit status 1 when any pair of runs contradicts.
"""

from __future__ import annotations

import argparse
import html
import re
import sys

from harness.report.comparison import load_comparison, verdict
from harness.report.reproduce import contradictions, findings, side_by_side
from harness.study.config import load_config


def plain(text: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="+", help="pairs: first run, second run")
    args = ap.parse_args()
    if len(args.configs) % 2:
        ap.error("give the configs in pairs: the first run's, then the second's")
    bad = 0
    for first, second in zip(args.configs[::2], args.configs[1::2], strict=True):
        runs = []
        for path in (first, second):
            cfg = load_config(path)
            d = load_comparison(cfg)
            if d.test is None or d.comparisons is None:
                print(f"{path}: not evaluated yet; run harness evaluate --config {path}", file=sys.stderr)
                return 2
            runs.append((cfg, d))
        (ca, da), (cb, db) = runs
        print(f"## {ca.dataset}: {ca.name} (seed {ca.seed}) vs {cb.name} (seed {cb.seed})\n")
        for cfg, d in runs:
            print(
                f"- {cfg.name} (seed {cfg.seed}, sampler seed {cfg.sampler.seed}, evaluation seeds"
                f" {cfg.evaluate.seed_list}): {plain(verdict(d))}"
            )
        fa, fb = findings(da.test, da.comparisons), findings(db.test, db.comparisons)
        table = side_by_side(fa, fb).rename(columns={"first": ca.name, "second": cb.name})
        print("\n" + table.to_markdown(index=False) + "\n")
        found = contradictions(fa, fb)
        print("contradictions: " + ("; ".join(found) if found else "none") + "\n")
        bad += bool(found)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
