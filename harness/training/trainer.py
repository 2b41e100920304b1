"""The training loop: P x K batches (or offline-mined triplets), phases timed separately."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from harness.data.sampler import PKSampler
from harness.errors import HarnessError
from harness.evaluation import retrieval_metrics
from harness.losses import get_distance
from harness.mining import get_miner
from harness.models.partial import set_bn_frozen
from harness.training.checkpoint import rng_state, set_rng_state
from harness.training.sources import Source
from harness.training.step import TrainStep


class TrainingDiverged(HarnessError):
    """The loss became NaN/inf: the trial fails, the study goes on."""


@dataclass(frozen=True)
class TrialParams:
    margin: float
    batch_p: int
    batch_k: int
    distance: str
    mining: str
    lr: float
    embedding_dim: int
    weight_decay: float = 1e-4
    refresh_every: int = 1
    train_blocks: int = 0  # trunk: partial: the backbone's last stages that train (see models.partial)
    trunk_lr: float = 0.0  # the trainable trunk's learning rate (0: the head's lr)
    bn: str = "train"  # BatchNorm in the trainable trunk: train (batch statistics) | frozen (pretrained)

    @property
    def batch_size(self) -> int:
        return self.batch_p * self.batch_k


def sync(device: torch.device) -> None:
    """Wait for the device (CUDA); a no-op on CPU. Only outside the training step."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def embed_source(
    model: nn.Module, source: Source, device: torch.device, batch_size: int = 512
) -> torch.Tensor:
    modes = [(m, m.training) for m in model.modules()]  # per module: frozen BatchNorm stays frozen
    model.eval()
    out = []
    try:
        for start in range(0, len(source), batch_size):
            i = torch.arange(start, min(start + batch_size, len(source)), device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out.append(model(source.batch(i, train=False)).float())
    finally:
        for m, training in modes:
            m.training = training
    return torch.cat(out)


def evaluate_source(
    model: nn.Module,
    source: Source,
    distance: str,
    device: torch.device,
    nmi: bool = False,
    per_query: dict | None = None,
) -> dict[str, float]:
    t0 = time.perf_counter()
    emb = embed_source(model, source, device)
    sync(device)
    embed_s = time.perf_counter() - t0
    metrics = retrieval_metrics(emb, source.labels, distance=distance, nmi=nmi, per_query=per_query)
    metrics["eval_img_per_s"] = len(source) / max(embed_s, 1e-9)
    metrics["eval_s"] = time.perf_counter() - t0
    return metrics


def cpus_available() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def host_load(wall0: float, cpu0: float) -> dict[str, float]:
    """The 1-minute load average against the CPUs this process may use, and how many CPUs the
    process itself kept busy since (wall0, cpu0): a load above the CPUs means other work competed."""
    wall = max(time.perf_counter() - wall0, 1e-9)
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return {
        "host_load": load,
        "host_cpus": float(cpus_available()),
        "cpu_busy": (time.process_time() - cpu0) / wall,
    }


EpochCallback = Callable[[int, dict[str, float]], None]
CheckpointCallback = Callable[[dict], None]


class PhaseTimer:
    """Per-phase step time without host syncs: CUDA events on GPU (read once per epoch), clocks on CPU."""

    PHASES = ("data_s", "forward_s", "mine_s", "loss_backward_s")

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[list] = []

    def mark(self) -> object:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def step(self, marks: list) -> None:
        self.marks.append(marks)

    def totals(self) -> dict[str, float]:
        out = dict.fromkeys(self.PHASES, 0.0)
        if self.cuda and self.marks:
            self.marks[-1][-1].synchronize()
        for m in self.marks:
            for name, a, b in zip(self.PHASES, m[:-1], m[1:]):
                out[name] += a.elapsed_time(b) / 1000 if self.cuda else b - a
        self.marks.clear()
        return out


def param_groups(model: nn.Module, params: TrialParams) -> list[dict] | None:
    """The trunk at ``trunk_lr``, the head at ``lr`` (None: one group, all at ``lr``)."""
    trunk = getattr(model, "trunk", None)
    if not params.trunk_lr or trunk is None:
        return None
    ids = {id(p) for p in trunk.parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    own = [p for p in trunk.parameters() if p.requires_grad]
    groups = [{"params": own, "lr": params.trunk_lr}, {"params": rest, "lr": params.lr}]
    return [g for g in groups if g["params"]]  # embedding_dim 0: the head has no parameters


def train(
    model: nn.Module,
    params: TrialParams,
    train_src: Source,
    epochs: int,
    device: torch.device,
    seed: int = 0,
    val_src: Source | None = None,
    on_epoch: EpochCallback | None = None,
    miner_impl: str = "own",
    resume: dict | None = None,
    on_checkpoint: CheckpointCallback | None = None,
    compile_mode: str = "eager",
) -> list[dict[str, float]]:
    """Train ``model`` in place; return one dict of statistics per epoch (``on_epoch`` sees each).

    Phases per step: data (index + augment), forward, mine (mining fused with the loss forward for
    online miners), loss_backward (backward + optimiser step). Nothing in the step waits for the
    device; statistics are read once per epoch.

    ``on_checkpoint`` receives the full training state after each epoch (before ``on_epoch``, which
    may prune); ``resume`` is such a state: training continues with the epoch after it, on the same
    random streams, and the returned history includes the resumed epochs.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dev_gen = torch.Generator(device=device).manual_seed(seed)
    distance = get_distance(params.distance)
    miner = get_miner(
        params.mining, distance, params.margin, dev_gen, impl=miner_impl, refresh_every=params.refresh_every
    )
    step = TrainStep(
        model,
        miner,
        params.margin,
        params.lr,
        params.weight_decay,
        device,
        compile_mode,
        param_groups(model, params),
    )
    opt = step.opt
    labels = train_src.labels
    sampler = PKSampler(labels.cpu().numpy(), params.batch_p, params.batch_k, seed)
    per_epoch = len(sampler) * params.batch_size  # images per epoch, the same for every strategy
    pool = None
    images_seen = 0
    history: list[dict[str, float]] = []
    first = 1
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        set_rng_state(resume["rng"], gen, dev_gen, sampler.rng, train_src)
        history = [dict(h) for h in resume["history"]]
        images_seen = int(resume["images_seen"])
        pool = None if resume["pool"] is None else resume["pool"].to(device)
        first = int(resume["epoch"]) + 1
    timer = PhaseTimer(device)
    for epoch in range(first, epochs + 1):
        model.train()
        if params.bn == "frozen":
            set_bn_frozen(model)
        offline_s = 0.0
        wall0, cpu0 = time.perf_counter(), time.process_time()
        if miner.offline:
            if pool is None or (epoch - 1) % miner.refresh_every == 0:
                t0 = time.perf_counter()
                emb_all = embed_source(model, train_src, device)
                pool = miner.mine_epoch(emb_all, labels, len(train_src), gen)
                sync(device)
                offline_s = time.perf_counter() - t0
                images_seen += len(train_src)  # the whole-set embedding pass is compute too
            per_step = max(1, params.batch_size // 3)
            n_steps = max(1, (per_epoch // 3) // per_step)
            order = pool[torch.randperm(len(pool), generator=gen).to(pool.device)]
            order = order.repeat(-(-n_steps * per_step // max(len(order), 1)), 1)[: n_steps * per_step]
            # one device tensor per epoch: [steps, 3 * per_step] = anchors, positives, negatives
            batches = order.view(n_steps, per_step, 3).transpose(1, 2).reshape(n_steps, -1).to(device)
            ar = torch.arange(per_step, device=device)
            fixed = (ar, ar + per_step, ar + 2 * per_step)
        else:
            batches = torch.from_numpy(np.stack(list(sampler))).to(device)  # one copy per epoch
            fixed = None
        losses, active, mined = [], torch.zeros((), device=device), torch.zeros((), device=device)
        for idx in batches:
            marks = [timer.mark()]
            x = train_src.batch(idx, train=True)
            y = labels[idx]
            marks.append(timer.mark())
            loss, n_active, n_mined = step(x, None if miner.offline else y, fixed, marks, timer.mark)
            marks.append(timer.mark())
            timer.step(marks)
            losses.append(loss.detach())
            active += n_active
            mined += n_mined
        t = timer.totals() | {"offline_mine_s": offline_s}
        mean_loss = float(torch.stack(losses).mean()) if losses else 0.0
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(f"loss is {mean_loss} at epoch {epoch}; lower lr")
        n_img = batches.numel()
        images_seen += n_img
        step_s = sum(t[k] for k in PhaseTimer.PHASES)
        stats = {
            "epoch": float(epoch),
            "loss": mean_loss,
            # offline mining's whole-set embedding + mining pass is training time too
            "train_img_per_s": n_img / max(step_s + offline_s, 1e-9),
            "step_time_ms": 1000 * step_s / max(len(batches), 1),
            **t,
            "active_fraction": float(active) / max(float(mined), 1.0),
            "triplets_per_step": float(mined) / max(len(batches), 1),
            "images_processed": float(images_seen),
            "compile_s": step.compile_s if epoch == first else 0.0,  # the first step, compile included
            # how busy the machine was: throughput measured under contention is flagged in the report
            **host_load(wall0, cpu0),
        }
        if val_src is not None:
            stats.update(
                {f"val_{k}": v for k, v in evaluate_source(model, val_src, params.distance, device).items()}
            )
        history.append(stats)
        if on_checkpoint is not None:
            t0 = time.perf_counter()
            on_checkpoint(
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "rng": rng_state(gen, dev_gen, sampler.rng, train_src),
                    "history": history,
                    "images_seen": images_seen,
                    "pool": None if pool is None else pool.cpu(),
                }
            )
            stats["checkpoint_s"] = time.perf_counter() - t0  # not part of train_img_per_s
        if on_epoch is not None:
            on_epoch(epoch, stats)
    return history
