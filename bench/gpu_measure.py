"""The GPU measurements of issue #9, one part per call (bench/gpu_check.sh runs them in order).

    python bench/gpu_measure.py steps   --out DIR   # compiled / graphed step vs raw timm, same process
    python bench/gpu_measure.py workers --out DIR   # train img/s: 1 eager worker vs N on one GPU
    python bench/gpu_measure.py frozen  --out DIR   # frozen-trunk trials/min, eager vs CUDA graphs
    python bench/gpu_measure.py partial --out DIR   # partial fine-tuning's trial img/s per cut
    python bench/gpu_measure.py study-config --data ROOT --out DIR   # the CUB study's YAML
    python bench/gpu_measure.py summary --out DIR   # the markdown table for bench/results/

Every ratio compares two things measured in the same run on the same device. Each part writes
DIR/<part>.json. Targets (issue #9): compiled step >= 0.95x compiled raw timm at B=256/224 and
B=128/112; N workers >= 3x one eager worker; frozen trials/min >= 230; no host sync in a step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _save(out: Path, part: str, data: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{part}.json").write_text(json.dumps(data, indent=1))
    print(json.dumps(data, indent=1))


def _step_rate(step, x, y, iters: int, check_sync: bool) -> float:  # noqa: ANN001
    import torch

    for _ in range(3):
        step(x, y)
    torch.cuda.synchronize()
    if check_sync:
        torch.cuda.set_sync_debug_mode("error")  # a step that waits for the host raises here
    try:
        t0 = time.perf_counter()
        for _ in range(iters):
            step(x, y)
        torch.cuda.synchronize()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return len(x) * iters / (time.perf_counter() - t0)


def steps(out: Path) -> None:
    import timm
    import torch

    from harness.bench import LogitsLoss
    from harness.losses import get_distance
    from harness.mining import get_miner
    from harness.models import EmbeddingHead
    from harness.models.embedder import Embedder, input_layout
    from harness.training.step import TrainStep

    dev = torch.device("cuda")
    rows = []
    plan = [(256, 224, ("eager", "compiled", "graphs")), (128, 112, ("eager", "graphs", "compiled"))]
    for batch, px, modes in plan:
        x = torch.randn(batch, 3, px, px, device=dev).contiguous(memory_format=input_layout(dev))
        y = torch.arange(batch // 4, device=dev).repeat_interleave(4)
        for mode in modes:
            row: dict = {"batch": batch, "px": px, "mode": mode}
            for who in ("raw", "harness"):
                t0 = time.perf_counter()
                if who == "raw":
                    model = timm.create_model("efficientnet_lite0", num_classes=1000).to(dev)
                    miner = LogitsLoss()
                else:
                    trunk = timm.create_model("efficientnet_lite0", num_classes=0).to(dev)
                    model = Embedder(trunk, EmbeddingHead(1280, 128)).to(dev)
                    miner = get_miner("semihard", get_distance("cosine"), 0.2)
                model = model.to(memory_format=torch.channels_last)
                step = TrainStep(model, miner, 0.2, 1e-4, 1e-4, dev, mode)  # type: ignore[arg-type]
                step(x, y)
                row[f"{who}_first_step_s"] = round(time.perf_counter() - t0, 1)  # compile or capture
                row[f"{who}_img_per_s"] = round(_step_rate(step, x, y, 20, check_sync=who == "harness"), 1)
                del model, step
                torch.cuda.empty_cache()
            row["ratio"] = round(row["harness_img_per_s"] / row["raw_img_per_s"], 3)
            rows.append(row)
            print(row, flush=True)
    eager = {(r["batch"], r["px"]): r["harness_img_per_s"] for r in rows if r["mode"] == "eager"}
    for r in rows:
        r["vs_harness_eager"] = round(r["harness_img_per_s"] / eager[(r["batch"], r["px"])], 3)
    _save(out, "steps", {"rows": rows, "graph_equals_eager": _graph_equals_eager()})


def _graph_equals_eager() -> dict:
    """One step of a frozen-trunk head from identical weights: CUDA-graph step vs eager step."""
    import copy

    import torch

    from harness.losses import get_distance
    from harness.mining import get_miner
    from harness.models import EmbeddingHead
    from harness.training.step import TrainStep

    dev = torch.device("cuda")
    torch.manual_seed(0)
    x, y = torch.randn(64, 1280, device=dev), torch.arange(16, device=dev).repeat_interleave(4)
    head = EmbeddingHead(1280, 512).to(dev)
    got = {}
    for mode in ("eager", "graphs"):
        m = copy.deepcopy(head)
        g = torch.Generator(device=dev).manual_seed(1)
        step = TrainStep(m, get_miner("random", get_distance("cosine"), 0.2, g), 0.2, 1e-3, 1e-4, dev, mode)
        losses = [step(x, y)[0].item() for _ in range(3)]
        got[mode] = (losses, m.fc.weight.detach().clone())
    return {
        "losses_eager": got["eager"][0],
        "losses_graphs": got["graphs"][0],
        "max_weight_diff": float((got["eager"][1] - got["graphs"][1]).abs().max()),
    }


def worker_load(mode: str, go: Path, seconds: float) -> None:
    """One worker process of the ``workers`` part: train steps at B=128, 112 px from uint8
    images with the real augmentation, for ``seconds`` once ``go`` exists (every process of the
    group has captured/compiled by then: it touches ``go``.ready.<pid> first); prints its img/s."""
    import numpy as np
    import timm
    import torch

    from harness.losses import get_distance
    from harness.mining import get_miner
    from harness.models import EmbeddingHead
    from harness.models.embedder import Embedder
    from harness.training import ImageSource
    from harness.training.step import TrainStep

    dev = torch.device("cuda")
    n = 2048
    images = np.random.default_rng(0).integers(0, 256, (n, 128, 128, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(n // 16), 16)
    src = ImageSource(images, labels, np.arange(n), 112, (0.5,) * 3, (0.5,) * 3, dev)
    trunk = (
        timm.create_model("efficientnet_lite0", num_classes=0).to(dev).to(memory_format=torch.channels_last)
    )
    model = Embedder(trunk, EmbeddingHead(1280, 128)).to(dev)
    step = TrainStep(model, get_miner("semihard", get_distance("cosine"), 0.2), 0.2, 1e-4, 1e-4, dev, mode)
    idx = torch.arange(128, device=dev)
    y = src.labels[idx]
    step(src.batch(idx, train=True), y)  # capture / compile before the clock
    torch.cuda.synchronize()
    go.with_name(f"{go.name}.ready.{os.getpid()}").touch()
    while not go.exists():
        time.sleep(0.01)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            step(src.batch(idx, train=True), y)
        done += 10 * 128
    torch.cuda.synchronize()
    print(json.dumps({"img_per_s": done / (time.perf_counter() - t0)}))


def workers(out: Path) -> None:
    """1 vs 4 processes on the GPU; each row is saved as soon as it is measured."""
    import tempfile

    rows: list[dict] = []
    for mode, n in (("eager", 1), ("graphs", 1), ("eager", 4), ("graphs", 4)):
        go = Path(tempfile.mkdtemp(prefix="gpu-workers-")) / "go"
        cmd = [sys.executable, __file__, "worker-load", "--mode", mode, "--go", str(go), "--seconds", "8"]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(n)]
        deadline = time.monotonic() + 90
        while len(list(go.parent.glob("go.ready.*"))) < n and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.05)
        go.touch()  # all ready (or a process failed / the wait ran out: measure what runs)
        rates = []
        for p in procs:
            lines = p.communicate(timeout=120)[0].strip().splitlines()
            if p.returncode == 0 and lines:
                rates.append(json.loads(lines[-1])["img_per_s"])
        rows.append({"mode": mode, "workers": n, "ran": len(rates), "img_per_s": round(sum(rates), 1)})
        print(rows[-1], flush=True)
        base = rows[0]["img_per_s"] or float("nan")
        for r in rows:
            r["vs_one_eager_worker"] = round(r["img_per_s"] / base, 2)
        _save(out, "workers", {"rows": rows})


def frozen(out: Path) -> None:
    import torch

    from harness.bench import frozen_bench

    dev = torch.device("cuda")
    rows = [frozen_bench(dev, trials=5, compile_mode=m) for m in ("eager", "graphs")]
    _save(out, "frozen", {"rows": rows})


def partial(out: Path) -> None:
    """Partial fine-tuning's trial (trunk: partial) from cached activations, on the GPU."""
    import torch

    from harness.bench import partial_bench

    _save(out, "partial", partial_bench(torch.device("cuda"), n=4096))


def study_config(data: Path, out: Path) -> None:
    """A real fine-tune study on CUB (112 px copy): a few trials and epochs, test R@1 vs baseline."""
    print(
        f"""name: gpu-cub
dataset: cub
data_root: {data}
results_dir: {out}/results
image_size: 112
cache_size: 112
backbone: efficientnet_lite0
pretrained: true
trunk: finetune
compile: graphs
epochs: 4
budget: {{n_trials: 4}}
sampler: {{name: random, seed: 0}}
pruner: {{name: none}}
evaluate: {{top_n: 1, seeds: 3, references: false}}
search_space:
  margin: {{low: 0.05, high: 0.3}}
  mining: {{choices: [semihard, batch-hard, distance-weighted]}}
  distance: cosine
  lr: {{low: 3.0e-5, high: 3.0e-4, log: true}}
  batch_p: 32
  batch_k: 4
  embedding_dim: 512"""
    )


def summary(out: Path) -> None:
    def load(part: str) -> dict | None:
        path = out / f"{part}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    gpu = (out / "gpu.txt").read_text().strip().splitlines()[-1] if (out / "gpu.txt").is_file() else "?"
    lines = [f"# GPU check ({gpu}, {time.strftime('%Y-%m-%d')})", ""]
    s = load("steps")
    if s:
        lines += [
            "| B | px | mode | raw img/s | harness img/s | harness / raw | vs harness eager | first step s |"
        ]
        lines += ["|---|---|---|---|---|---|---|---|"]
        for r in s["rows"]:
            lines.append(
                f"| {r['batch']} | {r['px']} | {r['mode']} | {r['raw_img_per_s']:,.0f} |"
                f" {r['harness_img_per_s']:,.0f} | {r['ratio']:.3f} | {r['vs_harness_eager']:.2f} |"
                f" {r['harness_first_step_s']} |"
            )
        lines += [
            "",
            f"CUDA-graph step vs eager, 3 steps from the same weights: {s['graph_equals_eager']}",
            "",
        ]
    w = load("workers")
    if w:
        lines += [
            "| mode | workers (ran) | train img/s (B=128, 112 px) | vs one eager worker |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['mode']} | {r['workers']} ({r.get('ran', r['workers'])}) | {r['img_per_s']:,.0f}"
            f" | {r['vs_one_eager_worker']} |"
            for r in w["rows"]
        ]
        lines.append("")
    f = load("frozen")
    if f:
        lines += [f"Frozen trunk, {r['mode']}: {r['trials_per_min']:.1f} trials/min" for r in f["rows"]] + [
            ""
        ]
    pt = load("partial")
    if pt:
        lines += [
            f"Partial trial, train_blocks {r['cut']}: {r['train_img_per_s']:,.0f} train img/s"
            for r in pt["rows"]
        ]
        lines.append("")
    if (out / "test.csv").is_file():
        lines += ["CUB study (study.log, test.csv, comparisons.csv):", "", "```"]
        lines += [(out / "test.csv").read_text(), (out / "comparisons.csv").read_text(), "```"]
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "part", choices=("steps", "workers", "frozen", "partial", "study-config", "summary", "worker-load")
    )
    p.add_argument("--out", default="/tmp/gpu-check")
    p.add_argument("--data")
    p.add_argument("--mode", default="eager")
    p.add_argument("--go", default="")
    p.add_argument("--seconds", type=float, default=8.0)
    a = p.parse_args()
    out = Path(a.out)
    if a.part == "worker-load":
        worker_load(a.mode, Path(a.go), a.seconds)
    elif a.part == "study-config":
        study_config(Path(a.data), out)
    else:
        {"steps": steps, "workers": workers, "frozen": frozen, "partial": partial, "summary": summary}[
            a.part
        ](out)


if __name__ == "__main__":
    main()
