"""The training loop: P x K batches (or offline-mined triplets), phases timed separately."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from harness.data.sampler import PKSampler
from harness.errors import HarnessError
from harness.evaluation import retrieval_metrics
from harness.losses import TripletLoss, get_distance
from harness.mining import get_miner
from harness.training.sources import Source


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

    @property
    def batch_size(self) -> int:
        return self.batch_p * self.batch_k


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def embed_source(
    model: nn.Module, source: Source, device: torch.device, batch_size: int = 512
) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(source), batch_size):
        i = torch.arange(start, min(start + batch_size, len(source)), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(model(source.batch(i, train=False)).float())
    model.train(was_training)
    return torch.cat(out)


def evaluate_source(
    model: nn.Module, source: Source, distance: str, device: torch.device, nmi: bool = False
) -> dict[str, float]:
    t0 = time.perf_counter()
    emb = embed_source(model, source, device)
    _sync(device)
    embed_s = time.perf_counter() - t0
    metrics = retrieval_metrics(emb, source.labels, distance=distance, nmi=nmi)
    metrics["eval_img_per_s"] = len(source) / max(embed_s, 1e-9)
    metrics["eval_s"] = time.perf_counter() - t0
    return metrics


EpochCallback = Callable[[int, dict[str, float]], None]


def train(
    model: nn.Module,
    params: TrialParams,
    train_src: Source,
    epochs: int,
    device: torch.device,
    seed: int = 0,
    val_src: Source | None = None,
    on_epoch: EpochCallback | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` in place; return one dict of statistics per epoch (``on_epoch`` sees each)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    distance = get_distance(params.distance)
    loss_fn = TripletLoss(params.margin, distance)
    miner = get_miner(params.mining, distance, params.margin, gen, refresh_every=params.refresh_every)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=params.lr, weight_decay=params.weight_decay
    )
    labels = train_src.labels
    sampler = PKSampler(labels.cpu().numpy(), params.batch_p, params.batch_k, seed)
    per_epoch = len(sampler) * params.batch_size  # images per epoch, the same for every strategy
    pool = None
    images_seen = 0
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        t = dict.fromkeys(("data_s", "forward_s", "mine_s", "loss_backward_s", "offline_mine_s"), 0.0)
        if miner.offline:
            if pool is None or (epoch - 1) % miner.refresh_every == 0:
                t0 = time.perf_counter()
                emb_all = embed_source(model, train_src, device)
                pool = miner.mine_epoch(emb_all, labels, len(train_src), gen)
                _sync(device)
                t["offline_mine_s"] = time.perf_counter() - t0
                images_seen += len(train_src)  # the whole-set embedding pass is compute too
            per_step = max(1, params.batch_size // 3)
            order = pool[torch.randperm(len(pool), generator=gen).to(pool.device)][: per_epoch // 3]
            batches = [order[s : s + per_step] for s in range(0, len(order), per_step)]
        else:
            batches = [torch.from_numpy(b) for b in sampler]
        losses, active, mined, n_img = [], torch.zeros((), device=device), 0, 0
        for b in batches:
            t0 = time.perf_counter()
            if miner.offline:
                trip = b.to(device)
                idx = trip.t().reshape(-1)  # anchors, then positives, then negatives
                m = len(trip)
                ar = torch.arange(m, device=device)
                triplets = (ar, ar + m, ar + 2 * m)
            else:
                idx = b.to(device)
            x = train_src.batch(idx, train=True)
            y = labels[idx]
            _sync(device)
            t1 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                emb = model(x).float()
            _sync(device)
            t2 = time.perf_counter()
            if not miner.offline:
                triplets = miner(emb.detach(), y)
            _sync(device)
            t3 = time.perf_counter()
            loss = loss_fn(emb, y, triplets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _sync(device)
            t4 = time.perf_counter()
            t["data_s"] += t1 - t0
            t["forward_s"] += t2 - t1
            t["mine_s"] += t3 - t2
            t["loss_backward_s"] += t4 - t3
            losses.append(loss.detach())
            active += loss_fn.active(emb.detach(), triplets)
            mined += int(triplets[0].numel())
            n_img += len(idx)
        mean_loss = float(torch.stack(losses).mean()) if losses else 0.0
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(f"loss is {mean_loss} at epoch {epoch}; lower lr")
        images_seen += n_img
        step_s = t["data_s"] + t["forward_s"] + t["mine_s"] + t["loss_backward_s"]
        stats = {
            "epoch": float(epoch),
            "loss": mean_loss,
            "train_img_per_s": n_img / max(step_s, 1e-9),
            "step_time_ms": 1000 * step_s / max(len(batches), 1),
            **t,
            "active_fraction": float(active) / max(mined, 1),
            "triplets_per_step": mined / max(len(batches), 1),
            "images_processed": float(images_seen),
        }
        if val_src is not None:
            stats.update(
                {f"val_{k}": v for k, v in evaluate_source(model, val_src, params.distance, device).items()}
            )
        history.append(stats)
        if on_epoch is not None:
            on_epoch(epoch, stats)
    return history
