"""Evaluation (kNN + retrieval metrics) at SOP's scale on the CPU: the torch path vs faiss exact, same run.

    .venv/bin/python bench/knn_scale.py [--sizes 60502 120000] [--dim 512] [--threads 2] [--out bench/results]

Random embeddings clustered into classes of SOP's test-set sizes (60,502 images in 11,316 classes of
2-12 images: sizes drawn as 2 + Binomial(10, p) with SOP's mean, then nudged to the exact total), and
twice that. Each (size, backend) is measured in its own subprocess, so its peak RSS (``ru_maxrss``
from ``wait4`` on that child) is its own: the embeddings, their normalised copy, the query blocks'
scores and the per-query results. The clock covers ``retrieval_metrics`` (nmi=False: NMI is the same
KMeans on a sample for both backends) after a small warm-up; the backends' metrics must agree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOP_IMAGES, SOP_CLASSES = 60_502, 11_316
BACKENDS = ("torch", "faiss")


def class_sizes(n: int, seed: int) -> list[int]:
    """Class sizes of 2-12 images with SOP's mean, summing to exactly ``n``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    mean = SOP_IMAGES / SOP_CLASSES
    sizes = 2 + rng.binomial(10, (mean - 2) / 10, size=round(n / mean))
    while (gap := n - int(sizes.sum())) != 0:
        step = 1 if gap > 0 else -1
        room = np.flatnonzero((sizes < 12) if step > 0 else (sizes > 2))
        pick = rng.choice(room, size=min(abs(gap), len(room)), replace=False)
        sizes[pick] += step
    return sizes.tolist()


def child(n: int, dim: int, backend: str, threads: int, seed: int, distance: str, spread: float) -> dict:
    """One measurement, in this (fresh) process: build the embeddings, warm up, time the evaluation."""
    import numpy as np
    import torch

    from harness.evaluation import retrieval_metrics

    torch.set_num_threads(threads)
    if backend == "faiss":
        import faiss

        faiss.omp_set_num_threads(threads)
    sizes = class_sizes(n, seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(sizes), dim, generator=gen)
    x = torch.randn(n, dim, generator=gen).mul_(spread)  # in place, block by block: no N x D temporaries
    for start in range(0, n, 8192):
        x[start : start + 8192] += centres[torch.from_numpy(labels[start : start + 8192])]
    retrieval_metrics(x[:2000], labels[:2000], distance, nmi=False, backend=backend)  # warm-up
    rss_before = _rss_mb()
    t0 = time.perf_counter()
    m = retrieval_metrics(x, labels, distance, nmi=False, backend=backend)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rss_before_eval_mb": rss_before, "classes": len(sizes), "metrics": m}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def measure(n: int, dim: int, backend: str, threads: int, seed: int, distance: str, spread: float) -> dict:
    """Run ``child`` in a subprocess; its peak RSS comes from the kernel's accounting of that child."""
    env = os.environ | {
        k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    }
    args = [str(n), str(dim), backend, str(threads), str(seed), distance, str(spread)]
    cmd = [sys.executable, __file__, "--child", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, cwd=REPO, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    row = json.loads(out.strip().splitlines()[-1])
    row |= {"n": n, "dim": dim, "backend": backend, "peak_rss_mb": usage.ru_maxrss / 1024}
    row["img_per_s"] = n / row["seconds"]
    return row


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO).stdout.strip()


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| images | dim | backend | seconds | img/s | peak RSS MB | RSS before eval MB | torch/faiss time"
        " | R@1 | MAP@R |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pair = {x["backend"]: x for x in rows if x["n"] == r["n"]}
        ratio = pair["torch"]["seconds"] / pair["faiss"]["seconds"] if len(pair) == 2 else float("nan")
        lines.append(
            f"| {r['n']:,} | {r['dim']} | {r['backend']} | {r['seconds']:.1f} | {r['img_per_s']:,.0f}"
            f" | {r['peak_rss_mb']:,.0f} | {r['rss_before_eval_mb']:,.0f} | {ratio:.2f}"
            f" | {r['metrics']['recall@1']:.4f}"
            f" | {r['metrics']['map@r']:.4f} |"
        )
    return lines


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        n, dim, backend, threads, seed, distance, spread = sys.argv[2:9]
        print(json.dumps(child(int(n), int(dim), backend, int(threads), int(seed), distance, float(spread))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[SOP_IMAGES, 120_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--distance", default="cosine")
    ap.add_argument("--seed", type=int, default=0)
    # within-class noise over unit-variance class centres: R@1 ~0.7 on 5,000 images, lower on more
    ap.add_argument("--spread", type=float, default=2.5)
    ap.add_argument("--out", default=str(REPO / "bench/results"))
    a = ap.parse_args()
    rows = []
    for n in a.sizes:
        for backend in BACKENDS:
            row = measure(n, a.dim, backend, a.threads, a.seed, a.distance, a.spread)
            rows.append(row)
            print(
                f"{n:,} x {a.dim} {backend}: {row['seconds']:.1f} s, {row['img_per_s']:,.0f} img/s,"
                f" peak RSS {row['peak_rss_mb']:,.0f} MB",
                flush=True,
            )
    # float32 rounding differs between the two (BLAS blocks vs faiss's), so a near-tie may swap
    diff = max(
        abs(r["metrics"][k] - x["metrics"][k])
        for r in rows
        for x in rows
        if x["n"] == r["n"]
        for k in r["metrics"]
    )
    dirty = bool(git("status", "--porcelain"))
    commit = git("rev-parse", "HEAD")
    head = (
        f"# Evaluation at SOP's scale: torch vs faiss exact ({cpu_model()}, {a.threads} threads,"
        f" commit {commit[:7]}{' + uncommitted changes' if dirty else ''},"
        f" `python bench/knn_scale.py`)"
    )
    note = (
        f"Random {a.distance} embeddings in classes of SOP's sizes (2-12 images), retrieval_metrics"
        " (kNN + Recall@K, MAP@R, R-precision; no NMI), each row its own process (RSS before eval:"
        f" the interpreter, its imports and the embeddings); torch and faiss metrics differ by at most"
        f" {diff:.1e}."
    )
    lines = [head, "", note, "", *table(rows)]
    print("\n".join(lines))
    out = Path(a.out) / f"knn-scale-cpu-{date.today():%Y%m%d}"
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "commit": commit,
        "dirty": dirty,
        "cpu": cpu_model(),
        "threads": a.threads,
        "distance": a.distance,
        "spread": a.spread,
        "seed": a.seed,
        "max_metric_diff": diff,
    }
    (out / "knn-scale.json").write_text(json.dumps(meta | {"rows": rows}, indent=2) + "\n")
    (out / "knn-scale.md").write_text("\n".join(lines) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
