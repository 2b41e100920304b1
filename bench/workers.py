"""Trials per minute with 1 vs several worker processes on one study (journal storage, this machine).

    .venv/bin/python bench/workers.py [--trials 16] [--out bench/results]

Generated CUB-layout data (tests/fixtures.py), two workloads: ``finetune`` (a tiny trunk trained
end to end, compute-bound) and ``frozen`` (cached features, head only: per-trial overhead-bound).
Each setup starts its workers as separate ``harness study worker`` processes on a fresh study and
times from launch until the last one exits (prepare/create are done before the clock starts).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from faults import fault_config  # noqa: E402

HARNESS = str(Path(sys.executable).parent / "harness")
SETUPS = [(1, 2), (2, 1), (4, 1)]  # (workers, torch threads each) on a 2-core machine


def config(tmp: Path, name: str, workload: str, n_trials: int) -> Path:
    """The fault tests' study (a tiny trunk on generated CUB), with the default heartbeat."""
    return fault_config(
        tmp,
        name,
        n_trials,
        trunk=workload,
        epochs=6 if workload == "finetune" else 4,
        fault_tolerance={"heartbeat_interval": 60, "grace_period": 180},
    )


def run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")


def measure(tmp: Path, workload: str, workers: int, threads: int, n_trials: int) -> dict:
    name = f"{workload}-{workers}w"
    path = config(tmp, name, workload, n_trials)
    run([HARNESS, "data", "prepare", "--config", str(path)])
    run([HARNESS, "study", "create", "--config", str(path)])
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                HARNESS,
                "--threads",
                str(threads),
                "study",
                "worker",
                "--config",
                str(path),
                "--worker",
                str(i),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(workers)
    ]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    if any(codes):
        raise SystemExit(f"{name}: workers exited with {codes}")
    return {
        "workload": workload,
        "workers": workers,
        "threads_each": threads,
        "trials": n_trials,
        "wall_s": round(wall, 2),
        "trials_per_min": round(60 * n_trials / wall, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for workload in ("finetune", "frozen"):
            base = None
            for workers, threads in SETUPS:
                row = measure(tmp, workload, workers, threads, a.trials)
                base = base or row["trials_per_min"]
                row["vs_1_worker"] = round(row["trials_per_min"] / base, 2)
                rows.append(row)
                print(json.dumps(row), flush=True)
    device = f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    stem = Path(a.out) / f"workers-cpu-{date.today():%Y%m%d}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"device": device, "rows": rows}, indent=1))
    lines = [
        f"# Trials/min, 1 vs N workers on one journal-file study — {device}",
        "",
        "| workload | workers × threads | trials | wall s | trials/min | vs 1 worker |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['workload']} | {r['workers']} × {r['threads_each']} | {r['trials']} | {r['wall_s']} |"
        f" {r['trials_per_min']} | {r['vs_1_worker']}× |"
        for r in rows
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
