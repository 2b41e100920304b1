"""Does ``compile: true`` pay for itself in a partial trial on the CPU? (issue #15)

    .venv/bin/python bench/compile_trials.py [--config studies/cub-compare.yaml] [--cache results/cache]

``harness bench --part partial`` times the top's training step alone: compiled, it runs faster at the
shallow cuts. A trial also compiles: a graph per new shape (P×K, distance, mining), and validation and
offline mining's whole-set pass stay eager. This runs the same short comparison (2 arms × 3 trials of
the config's search space, ``harness study run``) three times, with only ``compile`` changed:

- eager (``compile: false``);
- compiled with an empty inductor cache (a first run on a machine);
- compiled again with the cache the previous run filled (a rerun: FX-graph and AOTAutograd caches hit).

Each run is its own process with ``--threads`` threads, in a temp results folder whose ``cache`` links
to the existing activation cache (build it first, e.g. with ``make compare`` or ``harness data
prepare``), so only the trials are timed. Prints wall seconds, mean trial seconds and ratios; writes
``compile-cpu-<date>.md``/``.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def run(raw: dict, folder: Path, label: str, threads: int, env: dict[str, str]) -> dict:
    cfg = dict(raw, name=f"compile-{label}", results_dir=str(folder / "results"))
    path = folder / f"{label}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [
        sys.executable,
        "-m",
        "harness.cli",
        "--threads",
        str(threads),
        "study",
        "run",
        "--config",
        str(path),
    ]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, start_new_session=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{label}: harness exited {out.returncode}: {out.stderr.strip().splitlines()[-1:]}")
    sys.path.insert(0, str(REPO))
    from harness.study.arms import arm_configs
    from harness.study.config import load_config
    from harness.study.identity import load_study

    secs, values = [], []
    for a in arm_configs(load_config(path)):
        for t in load_study(a).trials:
            if t.duration is not None:
                secs.append(t.duration.total_seconds())
            if t.value is not None:
                values.append(round(float(t.value), 4))
    return {
        "label": label,
        "wall_s": wall,
        "trial_s": statistics.mean(secs),
        "trials": len(secs),
        "values": values,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "studies/cub-compare.yaml"))
    ap.add_argument("--cache", default=str(REPO / "results/cache"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "bench/results"))
    args = ap.parse_args()
    cache = Path(args.cache).resolve()
    if not (cache / "activations").is_dir():
        raise SystemExit(
            f"no activation cache under {cache}: run 'make compare' (or harness data prepare) first"
        )
    raw = yaml.safe_load(Path(args.config).read_text())
    arms = raw["search_space"]["mining"]["choices"]
    raw["search_space"]["mining"] = {"choices": [arms[0], next(a for a in arms if a.startswith("offline"))]}
    raw["budget"] = {"n_trials": args.trials}
    raw.pop("evaluate", None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "results").mkdir()
        (folder / "results" / "cache").symlink_to(cache)
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(folder / "inductor"), MPLBACKEND="Agg")
        for label, compile_ in (("eager", False), ("compiled-cold", True), ("compiled-warm", True)):
            rows.append(run(dict(raw, compile=compile_), folder, label, args.threads, env))
            r = rows[-1]
            print(
                f"{label:14s} wall {r['wall_s']:6.1f} s   mean trial {r['trial_s']:5.1f} s"
                f"   ({r['trials']} trials)"
            )
    eager = rows[0]
    lines = [
        f"# compile: true vs eager, whole partial trials on CPU ({platform.machine()},"
        f" {args.threads} threads, {date.today()})",
        "",
        f"{Path(args.config).name}: arms {raw['search_space']['mining']['choices']},"
        f" {args.trials} trials each, `harness study run` (caches built beforehand).",
        "",
        "| run | wall s | mean trial s | trial time / eager |",
        "| --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['wall_s']:.1f} | {r['trial_s']:.1f}"
            f" | {r['trial_s'] / eager['trial_s']:.2f}x |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"compile-cpu-{date.today():%Y%m%d}"
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
