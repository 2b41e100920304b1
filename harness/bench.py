"""Benchmarks that always print a ratio against a baseline measured in the same run, same device.

- step: raw timm train step (backbone + 1000-class classifier + cross-entropy, AdamW) vs the
  harness trial step (backbone + 128-d head + own semihard miner fused with the triplet loss), and
  the same with pytorch-metric-learning's miner + loss; eager and (GPU) torch.compile'd;
- miners: own fused mining+loss forward vs PML miner + PML TripletMarginLoss (ms, speed-up, and
  peak memory on GPU), at several batch sizes and embedding dims;
- trial: a short fine-tune trial from the device-resident uint8 cache: loader stall fraction (data
  phase / step time) and evaluation time as a fraction of trial time;
- frozen: frozen-trunk trials per minute on CUB-sized features (the CPU study regime).
Results: ``bench/results/<device>-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import functools
import json
import math
import platform
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import TripletMarginLoss

from harness.losses import get_distance
from harness.mining import get_miner, online_miners
from harness.models import EmbeddingHead
from harness.models.embedder import Embedder, input_layout
from harness.params import TrialParams
from harness.training import FeatureSource, ImageSource, train
from harness.training.step import TrainStep
from harness.training.trainer import sync


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.machine()} x{torch.get_num_threads()} threads"


def _time(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Seconds per call after warm-up, synchronised."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / iters


class LogitsLoss:
    """The raw timm baseline's loss in a miner's shape: cross-entropy on 1000-class logits, so the
    baseline and the harness step run through the same TrainStep (same optimiser, same modes)."""

    offline = False
    distance = None

    def loss(self, out: torch.Tensor, y: torch.Tensor, u: torch.Tensor | None = None) -> tuple:
        loss = F.cross_entropy(out, y)
        one = torch.ones((), dtype=torch.long, device=out.device)
        return loss, one, one

    def draw(self, batch: int, device: torch.device) -> None:
        return None


def step_bench(backbone: str, batch: int, size: int, device: torch.device, iters: int, compile: bool) -> dict:
    """img/s of raw timm vs harness (own miner) vs PML miner+loss, one process, same inputs; with
    ``compile``, the raw and harness steps both run as one compiled graph + fused AdamW."""
    p, k = batch // 4, 4
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=input_layout(device))
    y = torch.arange(p, device=device).repeat_interleave(k)
    mode = "compiled" if compile else "eager"
    dist = get_distance("cosine")
    results: dict[str, Any] = {
        "backbone": backbone,
        "batch_size": batch,
        "img_size": size,
        "compiled": compile,
    }
    raw = timm.create_model(backbone, pretrained=False, num_classes=1000).to(device)
    raw = raw.to(memory_format=input_layout(device))
    t0 = time.perf_counter()
    raw_step = TrainStep(raw, LogitsLoss(), 0.0, 1e-4, 0.0, device, mode)  # type: ignore[arg-type]
    raw_step(x, y)
    sync(device)
    results["raw_compile_s"] = time.perf_counter() - t0 if compile else 0.0
    results["raw_img_per_s"] = batch / _time(lambda: raw_step(x, y), device, 2, iters)
    for name, impl, m in (("harness", "own", mode), ("pml", "pml", "eager")):
        trunk = timm.create_model(backbone, pretrained=False, num_classes=0).to(device)
        trunk = trunk.to(memory_format=input_layout(device))
        width: int = trunk.num_features  # type: ignore[assignment]
        model = Embedder(trunk, EmbeddingHead(width, 128)).to(device)
        step = TrainStep(model, get_miner("semihard", dist, 0.2, impl=impl), 0.2, 1e-4, 0.0, device, m)
        results[f"{name}_img_per_s"] = batch / _time(functools.partial(step, x, y), device, 3, iters)
    results["ratio"] = results["harness_img_per_s"] / results["raw_img_per_s"]
    results["pml_ratio"] = results["pml_img_per_s"] / results["raw_img_per_s"]
    return results


def _peak_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def miner_bench(name: str, b: int, dim: int, device: torch.device, iters: int) -> dict:
    """Own fused mining + loss forward vs PML miner + PML loss (and PML's miner alone)."""
    g = torch.Generator(device=device).manual_seed(0)
    emb = F.normalize(torch.randn(b, dim, device=device, generator=g), dim=1)
    labels = torch.arange(b // 4, device=device).repeat_interleave(4)
    dist = get_distance("cosine")
    ours = get_miner(name, dist, 0.2, g)
    ref = ours.reference()  # PML's miner (for random, PML's nearest cost: enumerating every triplet)
    ref_loss = TripletMarginLoss(margin=0.2, distance=dist)

    def own_fn() -> object:
        return ours.loss(emb, labels)[0]

    def pml_fn() -> object:
        return ref_loss(emb, labels, ref(emb, labels))

    t_ours = _time(own_fn, device, 1, iters)
    row: dict[str, Any] = {"miner": name, "reference": type(ref).__name__ if ref is not None else None}
    row |= {"batch_size": b}
    row |= {"dim": dim, "ours_ms": 1e3 * t_ours, "ours_peak_mb": _peak_mb(own_fn, device)}
    if ref is None:  # a miner PML has no counterpart for: nothing to compare with
        return row | {
            "pml_ms": math.nan,
            "pml_miner_only_ms": math.nan,
            "speedup": math.nan,
            "pml_peak_mb": math.nan,
        }
    t_ref = _time(pml_fn, device, 1, iters)
    t_ref_miner = _time(lambda: ref(emb, labels), device, 0, iters)
    return row | {
        "pml_ms": 1e3 * t_ref,
        "pml_miner_only_ms": 1e3 * t_ref_miner,
        "speedup": t_ref / t_ours,
        "pml_peak_mb": _peak_mb(pml_fn, device),
    }


def trial_bench(device: torch.device, backbone: str, n: int, cache_px: int, size: int, batch: int) -> dict:
    """Two epochs of a fine-tune trial from the device-resident uint8 cache, each followed by the
    validation pass over a quarter as many images (the 80/20 class split's proportion); from the
    warm second epoch: loader stall (data phase / step time) and evaluation / (train + eval)."""
    g = torch.Generator().manual_seed(0)
    classes = max(batch // 4, 8)
    labels = np.repeat(np.arange(classes), -(-n // classes))[:n]
    images = torch.randint(0, 256, (n, cache_px, cache_px, 3), dtype=torch.uint8, generator=g).numpy()
    trunk = timm.create_model(backbone, pretrained=False, num_classes=0).to(device)
    trunk = trunk.to(memory_format=input_layout(device))
    width: int = trunk.num_features  # type: ignore[assignment]
    model = Embedder(trunk, EmbeddingHead(width, 128)).to(device)
    idx = np.arange(n)
    src = ImageSource(images, labels, idx, size, (0.5,) * 3, (0.5,) * 3, device)
    params = TrialParams(0.2, batch // 4, 4, "cosine", "semihard", 1e-4, 128)
    val = ImageSource(images, labels, idx[: max(n // 4, 8)], size, (0.5,) * 3, (0.5,) * 3, device)
    h = train(model, params, src, 2, device, val_src=val)[-1]  # the second epoch: warm, as in a study
    step_s = sum(h[k] for k in ("data_s", "forward_s", "mine_s", "loss_backward_s"))
    ev = {"eval_s": h["val_eval_s"], "eval_img_per_s": h["val_eval_img_per_s"]}
    train_s = step_s + h["offline_mine_s"]
    return {
        "backbone": backbone,
        "images": n,
        "img_size": size,
        "batch_size": batch,
        "train_img_per_s": h["train_img_per_s"],
        "loader_stall_fraction": h["data_s"] / step_s,
        "eval_fraction": ev["eval_s"] / (train_s + ev["eval_s"]),
        "eval_img_per_s": ev["eval_img_per_s"],
    }


def frozen_bench(device: torch.device, trials: int = 5, compile_mode: str = "eager") -> dict:
    """Frozen-trunk trials/min on CUB-sized features (4,685 train / 1,179 val x 1280, 8 epochs),
    with the training step in ``compile_mode`` (harness.training.step)."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(100, 1280, generator=g)
    labels = np.repeat(np.arange(100), 59)[:5864]
    feats = (centers[labels] + 2.0 * torch.randn(len(labels), 1280, generator=g)).numpy()
    train_idx, val_idx = np.flatnonzero(labels < 80), np.flatnonzero(labels >= 80)
    tr, va = FeatureSource(feats, labels, train_idx, device), FeatureSource(feats, labels, val_idx, device)
    mining = ("semihard", "batch-hard", "random", "distance-weighted", "offline-hard")
    t0 = time.perf_counter()
    for i in range(trials):
        head = EmbeddingHead(1280, 512).to(device)
        params = TrialParams(0.2, 16, 4, "cosine", mining[i % len(mining)], 1e-4, 512)
        train(head, params, tr, 8, device, i, va, compile_mode=compile_mode)
    minutes = (time.perf_counter() - t0) / 60
    return {"trials": trials, "epochs": 8, "mode": compile_mode, "trials_per_min": trials / minutes}


class PeerModel(torch.nn.Module):
    """The peer approach to partial fine-tuning, as a plain timm or PML script writes it: the whole
    backbone in the forward pass, its bottom frozen (no gradient, but recomputed on every step from
    the augmented image), the same top trained."""

    def __init__(self, model: torch.nn.Module, cut: int) -> None:
        super().__init__()
        import copy

        from harness.models.partial import Bottom, Top

        self.bottom, self.top, self.cut = Bottom(copy.deepcopy(model)), Top(model, cut), cut
        for p in self.bottom.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(self.bottom(x, [self.cut])[self.cut])


def partial_bench(
    device: torch.device,
    backbone: str = "efficientnet_lite0",
    px: int = 128,
    n: int = 1024,
    cuts: tuple[int, ...] = (0, 1, 2),
    peer_images: int = 256,
    compiled: bool = True,
) -> dict:
    """Train img/s of a partial trial (trunk: partial) at each cut, from activations shaped as
    ``backbone``'s at ``px`` (the cached bottom's output), 1 of 4 views per image, as ``train``
    runs it (channels_last top), eager and compiled; against the peer approach (``PeerModel``: the
    same top behind the frozen bottom recomputed on every augmented image), measured in the same run
    on ``peer_images`` images. Prints the ratios; the second compiled trial shows what torch's graph
    caches leave of the compile time when a study's next trial has other hyperparameters."""
    from harness.models.partial import Bottom
    from harness.training import ActivationSource

    model = timm.create_model(backbone, pretrained=False, num_classes=0)
    with torch.no_grad():
        shapes = {
            k: v.shape[1:] for k, v in Bottom(model).eval()(torch.zeros(1, 3, px, px), list(cuts)).items()
        }
    labels = np.repeat(np.arange(n // 4), 4)  # P=16 classes x K=4 per batch, as the demo's best trial
    rows = []
    for cut in cuts:
        g = np.random.default_rng(cut)
        centre = g.standard_normal((n, *shapes[cut])).astype(np.float16)
        views = g.standard_normal((n, 4, *shapes[cut])).astype(np.float16)
        src = ActivationSource(centre, views, np.arange(n), labels, np.arange(n), device)
        row: dict[str, Any] = {"cut": cut, "input": list(shapes[cut])}
        runs = (("eager", 0.2), ("compiled", 0.2), ("compiled", 0.3)) if compiled else (("eager", 0.2),)
        for key in ("compiled", "compiled_next"):
            row |= {f"{key}_img_per_s": math.nan, f"{key}_compile_s": math.nan}
        for mode, margin in runs:
            h = train(_top(model, cut), _partial_params(cut, margin), src, 2, device, compile_mode=mode)
            key = mode if margin == 0.2 else "compiled_next"
            row[f"{key}_img_per_s"] = h[-1]["train_img_per_s"]  # the second epoch: warm
            row[f"{key}_compile_s"] = h[0]["compile_s"]
        row["peer_img_per_s"] = _peer_img_per_s(model, cut, px, peer_images, device)
        row["vs_peer"] = row["eager_img_per_s"] / row["peer_img_per_s"]
        row["compiled_vs_eager"] = row["compiled_img_per_s"] / row["eager_img_per_s"]
        rows.append(row)
        print(
            f"partial cut {cut}: eager {row['eager_img_per_s']:.0f} img/s,"
            f" compiled {row['compiled_img_per_s']:.0f}"
            f" ({row['compiled_vs_eager']:.2f}x; compile {row['compiled_compile_s']:.1f} s, next trial"
            f" {row['compiled_next_compile_s']:.1f} s); peer (bottom recomputed) {row['peer_img_per_s']:.0f}:"
            f" {row['vs_peer']:.1f}x"
        )
    return {"backbone": backbone, "img_size": px, "rows": rows}


def _partial_params(cut: int, margin: float) -> TrialParams:
    return TrialParams(
        margin, 16, 4, "euclidean", "distance-weighted", 1e-4, 0, train_blocks=cut, trunk_lr=1e-4, bn="frozen"
    )


def _top(model: torch.nn.Module, cut: int) -> torch.nn.Module:
    from harness.models.partial import Top

    top = Top(model, cut).to(memory_format=torch.channels_last)
    return Embedder(top, EmbeddingHead(int(model.num_features), 0), layout=torch.channels_last)  # type: ignore[arg-type]


def _peer_img_per_s(model: torch.nn.Module, cut: int, px: int, n: int, device: torch.device) -> float:
    """One epoch (after a warm one) of the peer approach on ``n`` augmented images."""
    images = np.random.default_rng(0).integers(0, 256, (n, px, px, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(n // 4), 4)
    src = ImageSource(images, labels, np.arange(n), px, (0.5,) * 3, (0.5,) * 3, device)
    peer = Embedder(PeerModel(model, cut), EmbeddingHead(int(model.num_features), 0))  # type: ignore[arg-type]
    return train(peer, _partial_params(cut, 0.2), src, 2, device)[-1]["train_img_per_s"]


PARTS = ("steps", "trial", "frozen", "partial", "miners")


def run_bench(
    out_dir: Path, quick: bool = False, device: torch.device | None = None, parts: tuple[str, ...] = PARTS
) -> dict:
    """Every part (or those in ``parts``) on one device, then the JSON and Markdown summaries."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result: dict[str, Any] = {
        "device": device_name(device),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "steps": [],
        "miners": [],
        "trial": None,
        "frozen": None,
        "partial": None,
    }
    sizes = _sizes(device, quick)
    if "steps" in parts:
        result["steps"] = _steps(device, sizes)
    if "trial" in parts:
        result["trial"] = _trial(device, quick)
        print(_trial_line(result["trial"]))
    if "frozen" in parts and not quick:
        result["frozen"] = frozen_bench(device)
        print(f"frozen-trunk trials/min (CUB-sized features): {result['frozen']['trials_per_min']:.1f}")
    if "partial" in parts:
        quick_partial = {
            "backbone": "test_efficientnet",
            "px": 64,
            "n": 256,
            "cuts": (0, 1),
            "peer_images": 64,
            "compiled": False,
        }
        result["partial"] = partial_bench(device, **(quick_partial if quick else {}))  # type: ignore[arg-type]
    if "miners" in parts:
        result["miners"] = _miners(device, sizes)
    out_dir.mkdir(parents=True, exist_ok=True)
    which = "" if set(parts) == set(PARTS) else "-".join(parts) + "-"
    stem = f"{device.type}-{'quick-' if quick else ''}{which}{datetime.now(timezone.utc):%Y%m%d}"
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out_dir / f"{stem}.md").write_text(_markdown(result))
    print(f"wrote {out_dir / stem}.json and .md")
    return result


def _sizes(device: torch.device, quick: bool) -> dict[str, Any]:
    cpu = device.type == "cpu"
    if quick:
        return {
            "steps": [("test_efficientnet", 16, 64)],
            "sizes": [64],
            "dims": [32],
            "compiles": [False],
            "iters": 3,
        }
    if cpu:
        steps = [("efficientnet_lite0", 32, 128)]
        return {"steps": steps, "sizes": [128, 512], "dims": [128, 512], "compiles": [False], "iters": 3}
    steps = [
        (b, n, 224) for b in ("resnet50", "efficientnet_lite0", "vit_small_patch16_224") for n in (128, 256)
    ]
    return {
        "steps": steps,
        "sizes": [128, 512, 2048],
        "dims": [128, 512],
        "compiles": [False, True],
        "iters": 20,
    }


def _steps(device: torch.device, sizes: dict[str, Any]) -> list[dict]:
    rows = []
    for backbone, batch, size in sizes["steps"]:
        for comp in sizes["compiles"]:
            r = step_bench(backbone, batch, size, device, sizes["iters"], comp)
            rows.append(r)
            mode = "compiled" if comp else "eager"
            print(
                f"step  {backbone} B={batch} {size}px {mode}: raw {r['raw_img_per_s']:.1f}, harness "
                f"{r['harness_img_per_s']:.1f} ({r['ratio']:.3f}x), PML {r['pml_img_per_s']:.1f} "
                f"({r['pml_ratio']:.3f}x) img/s"
            )
    return rows


def _trial(device: torch.device, quick: bool) -> dict:
    if quick:
        return trial_bench(device, "test_efficientnet", 64, 40, 32, 16)
    cpu = device.type == "cpu"
    return trial_bench(
        device,
        "efficientnet_lite0",
        512 if cpu else 5864,
        146 if cpu else 256,
        128 if cpu else 224,
        32 if cpu else 256,
    )


def _miners(device: torch.device, sizes: dict[str, Any]) -> list[dict]:
    rows = []
    for name in online_miners():
        for dim in sizes["dims"]:
            for b in sizes["sizes"]:
                r = miner_bench(name, b, dim, device, sizes["iters"] if b < 2048 else 5)
                rows.append(r)
                print(
                    f"miner {name:18s} B={b:5d} D={dim:4d} ours {r['ours_ms']:9.2f} ms  "
                    f"PML {r['pml_ms']:9.2f} ms  speed-up {r['speedup']:7.2f}x"
                )
    return rows


def _num(v: float, spec: str, suffix: str = "") -> str:
    return "–" if v is None or math.isnan(v) else f"{v:{spec}}{suffix}"


def _mb(v: float | None) -> str:
    return "–" if v is None else f"{v:.0f}"


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _markdown(r: dict) -> str:
    lines = [f"# Bench on {r['device']} ({r['date']}, torch {r['torch']}, timm {r['timm']})", ""]
    if r["steps"]:
        lines += _steps_markdown(r["steps"])
    if r["miners"]:
        lines += _miners_markdown(r["miners"])
    if r.get("trial"):
        lines += ["", _trial_line(r["trial"])]
    if r.get("partial"):
        lines += _partial_markdown(r["partial"])
    if r.get("frozen"):
        f = r["frozen"]
        lines += [
            "",
            f"Frozen trunk: {f['trials_per_min']:.1f} trials/min ({f['trials']} trials of "
            f"{f['epochs']} epochs on CUB-sized 1280-d features).",
        ]
    return "\n".join(lines) + "\n"


def _steps_markdown(steps: list[dict]) -> list[str]:
    lines = [
        "Train step img/s (same inputs, same process): raw timm vs harness (own fused miner + loss) vs PML.",
        "",
        _row("backbone", "batch", "px", "mode", "raw", "harness", "harness / raw", "PML", "PML / raw"),
        _row(*["---"] * 9),
    ]
    for s in steps:
        lines.append(
            _row(
                s["backbone"],
                s["batch_size"],
                s["img_size"],
                "compiled" if s["compiled"] else "eager",
                f"{s['raw_img_per_s']:.1f}",
                f"{s['harness_img_per_s']:.1f}",
                f"{s['ratio']:.3f}",
                f"{s['pml_img_per_s']:.1f}",
                f"{s['pml_ratio']:.3f}",
            )
        )
    return lines


def _miners_markdown(miners: list[dict]) -> list[str]:
    head = ("miner", "PML reference", "B", "D", "ours ms", "PML ms", "PML miner only ms", "speed-up")
    lines = [
        "",
        "Mining + loss forward: own (fused) vs PML miner + PML TripletMarginLoss.",
        "",
        _row(*head, "ours MB", "PML MB"),
        _row(*["---"] * 10),
    ]
    for m in miners:
        lines.append(
            _row(
                m["miner"],
                m["reference"],
                m["batch_size"],
                m["dim"],
                f"{m['ours_ms']:.2f}",
                f"{m['pml_ms']:.2f}",
                f"{m['pml_miner_only_ms']:.2f}",
                f"{m['speedup']:.1f}x",
                _mb(m["ours_peak_mb"]),
                _mb(m["pml_peak_mb"]),
            )
        )
    return lines


def _partial_markdown(p: dict) -> list[str]:
    lines = [
        "",
        f"Partial fine-tuning ({p['backbone']} at {p['img_size']} px): train img/s from the cached"
        " activations, eager and compiled (compile time of a first trial and of the next trial with another"
        " margin), against the peer approach that recomputes the frozen bottom on every augmented image.",
        "",
        _row(
            "train_blocks",
            "input",
            "eager",
            "compiled",
            "compiled / eager",
            "compile s",
            "next s",
            "peer",
            "eager / peer",
        ),
        _row(*["---"] * 9),
    ]
    for x in p["rows"]:
        lines.append(
            _row(
                x["cut"],
                tuple(x["input"]),
                f"{x['eager_img_per_s']:.0f}",
                _num(x["compiled_img_per_s"], ".0f"),
                _num(x["compiled_vs_eager"], ".2f", "x"),
                _num(x["compiled_compile_s"], ".1f"),
                _num(x["compiled_next_compile_s"], ".1f"),
                f"{x['peer_img_per_s']:.0f}",
                f"{x['vs_peer']:.1f}x",
            )
        )
    return lines


def _trial_line(t: dict) -> str:
    return (
        f"Trial ({t['backbone']}, {t['images']} images at {t['img_size']} px, batch {t['batch_size']}): "
        f"{t['train_img_per_s']:.1f} train img/s, loader stall {100 * t['loader_stall_fraction']:.2f} % "
        f"of step time, evaluation {100 * t['eval_fraction']:.2f} % of trial time."
    )
