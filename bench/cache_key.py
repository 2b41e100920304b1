"""What the content key of a dataset copy costs (issue #16, item 9), against the stat-only key it replaced.

    .venv/bin/python bench/cache_key.py [--out bench/results]

For the real CUB-128 and Cars196-128 copies in ../shared/data: the old key (size + mtime of every
file, no bytes read), the first content key of a copy (every file read and hashed: what a new copy
or a new cache folder pays once), and the content key on a later start (every file stat'ed, none
read). Each figure is the median of ``--repeat`` runs; the first hash is measured on a fresh index
each time (the files themselves are in the page cache after the first run, as on a machine that
has just built the caches).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

from harness.data import get_dataset
from harness.data.base import ImageList
from harness.data.digests import content_key

REPO = Path(__file__).resolve().parents[1]
COPIES = {
    "cub": REPO.parent / "shared" / "data" / "cub200-128",
    "cars": REPO.parent / "shared" / "data" / "cars196-128",
}


def stat_only_key(images: ImageList) -> str:
    """The key before: file list, folder, and each file's size and mtime."""
    h = hashlib.sha256(images.fingerprint().encode())
    h.update(str(images.image_dir.resolve()).encode())
    for p in images.paths:
        st = (images.image_dir / p).stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(name: str, root: Path, repeat: int) -> dict:
    images = get_dataset(name).load(root)
    size_mb = sum((images.image_dir / p).stat().st_size for p in images.paths) / 2**20
    with tempfile.TemporaryDirectory() as d:
        content_key(images, Path(d) / "warm-up")  # the files into the page cache

        def first() -> None:
            with tempfile.TemporaryDirectory() as fresh:
                content_key(images, Path(fresh))

        warm = Path(d) / "index"
        content_key(images, warm)
        row = {
            "dataset": name,
            "files": len(images),
            "megabytes": round(size_mb, 1),
            "stat_only_key_s": timed(lambda: stat_only_key(images), repeat),
            "content_key_first_s": timed(first, repeat),
            "content_key_later_s": timed(lambda: content_key(images, warm), repeat),
        }
    row["later_vs_stat_only"] = row["content_key_later_s"] / row["stat_only_key_s"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    rows = [measure(n, root, a.repeat) for n, root in COPIES.items() if root.exists()]
    head = f"cache key cost, {platform.node()} ({platform.machine()}), {date.today()}, median of {a.repeat}"
    lines = [
        head,
        "",
        "| dataset | files | MB | old key (stat) | content key, first | content key, later | later / old |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['files']:,} | {r['megabytes']} | {r['stat_only_key_s']:.3f} s |"
            f" {r['content_key_first_s']:.3f} s | {r['content_key_later_s']:.3f} s |"
            f" {r['later_vs_stat_only']:.2f}x |"
        )
    text = "\n".join(lines)
    print(text)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"cache-key-cpu-{date.today():%Y%m%d}"
    stem.with_suffix(".md").write_text(text + "\n")
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
