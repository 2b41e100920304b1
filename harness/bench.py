"""Benchmarks that always print a ratio against a baseline measured in the same run.

- train step: raw timm step (backbone + classifier + cross-entropy) vs the harness trial step
  (backbone + embedding head + miner + triplet loss), same batch, same device;
- miners: the miner the harness uses for each strategy vs pytorch-metric-learning's.
Results: ``bench/results/<device>-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from pytorch_metric_learning import miners as pml_miners

from harness.losses import TripletLoss, get_distance
from harness.mining import ONLINE, get_miner
from harness.models import EmbeddingHead
from harness.models.embedder import Embedder


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.machine()} x{torch.get_num_threads()} threads"


def _time(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Seconds per call after warm-up, synchronised."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def step_bench(backbone: str, batch: int, size: int, device: torch.device, iters: int) -> dict:
    p, k = batch // 4, 4
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.arange(p, device=device).repeat_interleave(k)
    amp = device.type == "cuda"

    raw = timm.create_model(backbone, pretrained=False, num_classes=1000).to(device)
    opt = torch.optim.AdamW(raw.parameters(), lr=1e-4)

    def raw_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(raw(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    trunk = timm.create_model(backbone, pretrained=False, num_classes=0)
    width: int = trunk.num_features  # type: ignore[assignment]
    model = Embedder(trunk, EmbeddingHead(width, 128)).to(device)
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dist = get_distance("cosine")
    miner, loss_fn = get_miner("semihard", dist, 0.2), TripletLoss(0.2, dist)

    def harness_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            emb = model(x).float()
        loss = loss_fn(emb, y, miner(emb.detach(), y))
        opt2.zero_grad(set_to_none=True)
        loss.backward()
        opt2.step()

    t_raw = _time(raw_step, device, 2, iters)
    t_h = _time(harness_step, device, 2, iters)
    return {
        "backbone": backbone,
        "batch_size": batch,
        "img_size": size,
        "raw_img_per_s": batch / t_raw,
        "harness_img_per_s": batch / t_h,
        "ratio": t_raw / t_h,
    }


PML_REFERENCE: dict[str, Callable[[Any, float], Any]] = {
    "all": lambda d, m: pml_miners.TripletMarginMiner(margin=m, type_of_triplets="all", distance=d),
    "semihard": lambda d, m: pml_miners.TripletMarginMiner(margin=m, type_of_triplets="semihard", distance=d),
    "hard": lambda d, m: pml_miners.TripletMarginMiner(margin=m, type_of_triplets="hard", distance=d),
    "batch-hard": lambda d, m: pml_miners.BatchHardMiner(distance=d),
    "distance-weighted": lambda d, m: pml_miners.DistanceWeightedMiner(),
    # PML has no random-negative miner; its closest cost is enumerating all triplets.
    "random": lambda d, m: pml_miners.TripletMarginMiner(margin=m, type_of_triplets="all", distance=d),
}


def miner_bench(name: str, b: int, dim: int, device: torch.device, iters: int) -> dict:
    emb = F.normalize(torch.randn(b, dim, device=device), dim=1)
    labels = torch.arange(b // 4, device=device).repeat_interleave(4)
    dist = get_distance("cosine" if name != "distance-weighted" else "euclidean")
    ours = get_miner(name, dist, 0.2)
    ref = PML_REFERENCE[name](dist, 0.2)
    t_ours = _time(lambda: ours(emb, labels), device, 1, iters)
    t_ref = _time(lambda: ref(emb, labels), device, 1, iters)
    impl = "own" if type(ours).__name__ != "PMLMiner" else "pml"
    return {
        "miner": name,
        "impl": impl,
        "reference": type(ref).__name__,
        "batch_size": b,
        "dim": dim,
        "ours_ms": 1e3 * t_ours,
        "pml_ms": 1e3 * t_ref,
        "speedup": t_ref / t_ours,
    }


def run_bench(out_dir: Path, quick: bool = False, device: torch.device | None = None) -> dict:
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cpu = device.type == "cpu"
    steps = (
        [("efficientnet_lite0", 32, 128)]
        if cpu
        else [
            (b, n, 224)
            for b in ("resnet50", "efficientnet_lite0", "vit_small_patch16_224")
            for n in (128, 256)
        ]
    )
    if quick:
        steps = [("test_efficientnet", 16, 64)]
    sizes = [128, 512] if cpu else [128, 512, 2048]
    if quick:
        sizes = [64]
    result: dict[str, Any] = {
        "device": device_name(device),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "steps": [],
        "miners": [],
    }
    for backbone, batch, size in steps:
        r = step_bench(backbone, batch, size, device, iters=3 if cpu else 20)
        result["steps"].append(r)
        print(
            f"step  {backbone:24s} B={batch:4d} {size}px raw {r['raw_img_per_s']:8.1f} img/s  "
            f"harness {r['harness_img_per_s']:8.1f} img/s  ratio {r['ratio']:.3f}"
        )
    for name in ONLINE:
        for b in sizes:
            r = miner_bench(name, b, 128, device, iters=3 if cpu else 10)
            result["miners"].append(r)
            print(
                f"miner {name:18s} ({r['impl']}) B={b:5d} D=128 ours {r['ours_ms']:9.2f} ms  "
                f"PML {r['pml_ms']:9.2f} ms  speed-up {r['speedup']:6.2f}x"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{device.type}-{'quick-' if quick else ''}{datetime.now(timezone.utc):%Y%m%d}"
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out_dir / f"{stem}.md").write_text(_markdown(result))
    print(f"wrote {out_dir / stem}.json and .md")
    return result


def _markdown(r: dict) -> str:
    lines = [
        f"# Bench on {r['device']} ({r['date']}, torch {r['torch']}, timm {r['timm']})",
        "",
        "| backbone | batch | px | raw timm img/s | harness img/s | ratio |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {s['backbone']} | {s['batch_size']} | {s['img_size']} | {s['raw_img_per_s']:.1f} | "
        f"{s['harness_img_per_s']:.1f} | {s['ratio']:.3f} |"
        for s in r["steps"]
    ]
    lines += [
        "",
        "| miner | impl | PML reference | B | D | ours ms | PML ms | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {m['miner']} | {m['impl']} | {m['reference']} | {m['batch_size']} | {m['dim']} | "
        f"{m['ours_ms']:.2f} | {m['pml_ms']:.2f} | {m['speedup']:.2f}x |"
        for m in r["miners"]
    ]
    return "\n".join(lines) + "\n"
