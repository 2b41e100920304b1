"""The training loop: P x K batches (or offline-mined triplets), phases timed separately."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.data.sampler import PKSampler
from harness.errors import HarnessError
from harness.evaluation import retrieval_metrics
from harness.losses import get_distance
from harness.mining import get_miner
from harness.models.partial import set_bn_frozen
from harness.params import TrialParams
from harness.training.checkpoint import rng_state, set_rng_state
from harness.training.sources import Source
from harness.training.step import TrainStep


class TrainingDiverged(HarnessError):
    """The loss became NaN/inf: the trial fails, the study goes on."""


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
    embeddings: dict | None = None,
    query: np.ndarray | None = None,
    gallery: np.ndarray | None = None,
    **scoring: Any,
) -> dict[str, float]:
    """Retrieval metrics of ``model`` on ``source``; ``per_query`` receives each query's scores and
    ``embeddings`` (when given) the embeddings themselves (``"embeddings"``: [N, D] on the CPU).
    ``query``, ``gallery``: flags over the source's images for query-against-gallery scoring
    (None: leave-one-out); ``scoring``: the metrics' other settings (``backend``, ``nmi_max_images``)."""
    t0 = time.perf_counter()
    emb = embed_source(model, source, device)
    if embeddings is not None:
        embeddings["embeddings"] = emb.detach().float().cpu()
    sync(device)
    embed_s = time.perf_counter() - t0
    metrics = retrieval_metrics(
        emb,
        source.labels,
        distance=distance,
        nmi=nmi,
        per_query=per_query,
        query=query,
        gallery=gallery,
        **scoring,
    )
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
    run = Training(model, params, train_src, device, seed, miner_impl, compile_mode)
    first = run.restore(resume) if resume is not None else 1
    for epoch in range(first, epochs + 1):
        stats = run.epoch(epoch, first)
        if val_src is not None:
            stats.update(
                {f"val_{k}": v for k, v in evaluate_source(model, val_src, params.distance, device).items()}
            )
        run.history.append(stats)
        if on_checkpoint is not None:
            t0 = time.perf_counter()
            on_checkpoint(run.state(epoch))
            stats["checkpoint_s"] = time.perf_counter() - t0  # not part of train_img_per_s
        if on_epoch is not None:
            on_epoch(epoch, stats)
    return run.history


class Training:
    """One trial's training state: its random streams (torch, the miner's device generator, the
    P x K sampler, the source's augmentation), the step, the offline pool, the history."""

    def __init__(
        self,
        model: nn.Module,
        params: TrialParams,
        train_src: Source,
        device: torch.device,
        seed: int,
        miner_impl: str,
        compile_mode: str,
    ) -> None:
        torch.manual_seed(seed)
        self.model, self.params, self.src, self.device = model, params, train_src, device
        self.gen = torch.Generator().manual_seed(seed)
        self.dev_gen = torch.Generator(device=device).manual_seed(seed)
        self.miner = get_miner(
            params.mining,
            get_distance(params.distance),
            params.margin,
            self.dev_gen,
            impl=miner_impl,
            refresh_every=params.refresh_every,
        )
        self.step = TrainStep(
            model,
            self.miner,
            params.margin,
            params.lr,
            params.weight_decay,
            device,
            compile_mode,
            param_groups(model, params),
        )
        self.labels = train_src.labels
        self.sampler = PKSampler(self.labels.cpu().numpy(), params.batch_p, params.batch_k, seed)
        self.per_epoch = (
            len(self.sampler) * params.batch_size
        )  # images per epoch, the same for every strategy
        self.pool: torch.Tensor | None = None
        self.images_seen = 0
        self.history: list[dict[str, float]] = []
        self.timer = PhaseTimer(device)

    def restore(self, resume: dict) -> int:
        """Continue from a checkpoint's state; returns the first epoch still to run."""
        self.model.load_state_dict(resume["model"])
        self.step.opt.load_state_dict(resume["optimizer"])
        set_rng_state(resume["rng"], self.gen, self.dev_gen, self.sampler.rng, self.src)
        self.history = [dict(h) for h in resume["history"]]
        self.images_seen = int(resume["images_seen"])
        self.pool = None if resume["pool"] is None else resume["pool"].to(self.device)
        return int(resume["epoch"]) + 1

    def state(self, epoch: int) -> dict:
        """Everything the next epoch depends on (see harness.training.checkpoint)."""
        return {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.step.opt.state_dict(),
            "rng": rng_state(self.gen, self.dev_gen, self.sampler.rng, self.src),
            "history": self.history,
            "images_seen": self.images_seen,
            "pool": None if self.pool is None else self.pool.cpu(),
        }

    def _offline_batches(self, epoch: int) -> tuple[torch.Tensor, tuple, float]:
        """Re-mine the whole training split when due (its embedding pass is compute too), then one
        device tensor per epoch: [steps, 3 * per_step] = anchors, positives, negatives."""
        p, device, offline_s = self.params, self.device, 0.0
        if self.pool is None or (epoch - 1) % self.miner.refresh_every == 0:
            t0 = time.perf_counter()
            emb_all = embed_source(self.model, self.src, device)
            self.pool = self.miner.mine_epoch(emb_all, self.labels, len(self.src), self.gen)
            sync(device)
            offline_s = time.perf_counter() - t0
            self.images_seen += len(self.src)
        per_step = max(1, p.batch_size // 3)
        n_steps = max(1, (self.per_epoch // 3) // per_step)
        pool = self.pool
        order = pool[torch.randperm(len(pool), generator=self.gen).to(pool.device)]
        order = order.repeat(-(-n_steps * per_step // max(len(order), 1)), 1)[: n_steps * per_step]
        batches = order.view(n_steps, per_step, 3).transpose(1, 2).reshape(n_steps, -1).to(device)
        ar = torch.arange(per_step, device=device)
        return batches, (ar, ar + per_step, ar + 2 * per_step), offline_s

    def epoch(self, epoch: int, first: int) -> dict[str, float]:
        """Train one epoch; its statistics (no validation yet)."""
        self.model.train()
        if self.params.bn == "frozen":
            set_bn_frozen(self.model)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        if self.miner.offline:
            batches, fixed, offline_s = self._offline_batches(epoch)
        else:
            batches = torch.from_numpy(np.stack(list(self.sampler))).to(self.device)  # one copy per epoch
            fixed, offline_s = None, 0.0
        losses, active, mined = self._steps(batches, fixed)
        t = self.timer.totals() | {"offline_mine_s": offline_s}
        mean_loss = float(torch.stack(losses).mean()) if losses else 0.0
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(f"loss is {mean_loss} at epoch {epoch}; lower lr")
        n_img = batches.numel()
        self.images_seen += n_img
        step_s = sum(t[k] for k in PhaseTimer.PHASES)
        return {
            "epoch": float(epoch),
            "loss": mean_loss,
            # offline mining's whole-set embedding + mining pass is training time too
            "train_img_per_s": n_img / max(step_s + offline_s, 1e-9),
            "step_time_ms": 1000 * step_s / max(len(batches), 1),
            **t,
            "active_fraction": float(active) / max(float(mined), 1.0),
            "triplets_per_step": float(mined) / max(len(batches), 1),
            "images_processed": float(self.images_seen),
            "compile_s": self.step.compile_s if epoch == first else 0.0,  # the first step, compile included
            # how busy the machine was: throughput measured under contention is flagged in the report
            **host_load(wall0, cpu0),
        }

    def _steps(self, batches: torch.Tensor, fixed: tuple | None) -> tuple[list, torch.Tensor, torch.Tensor]:
        device, timer = self.device, self.timer
        losses, active, mined = [], torch.zeros((), device=device), torch.zeros((), device=device)
        for idx in batches:
            marks = [timer.mark()]
            x = self.src.batch(idx, train=True)
            y = self.labels[idx]
            marks.append(timer.mark())
            loss, n_active, n_mined = self.step(
                x, None if self.miner.offline else y, fixed, marks, timer.mark
            )
            marks.append(timer.mark())
            timer.step(marks)
            losses.append(loss.detach())
            active += n_active
            mined += n_mined
        return losses, active, mined
