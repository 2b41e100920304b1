"""Offline mining: triplets chosen over the whole training split between epochs.

Each refresh, every sampled anchor gets a random positive from its class and a negative chosen
among ALL training images of other classes: the hardest (``hard``), the closest one farther than
the positive (``semihard``, FaceNet; falls back to the hardest when none is), or a uniform one
(``random``). Work is chunked over anchors, so memory is chunk x N, not N x N.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning.distances import BaseDistance

from harness.mining.base import Miner
from harness.registry import MINERS

STRATEGIES = ("hard", "semihard", "random")


@MINERS.register("offline-hard", strategy="hard")
@MINERS.register("offline-semihard", strategy="semihard")
@MINERS.register("offline-random", strategy="random")
class OfflineMiner(Miner):
    offline = True

    def __init__(
        self,
        distance: BaseDistance,
        margin: float,
        generator: torch.Generator | None = None,
        *,
        strategy: str,
        refresh_every: int = 1,
        chunk: int = 1024,
    ) -> None:
        super().__init__(distance, margin, generator)
        if strategy not in STRATEGIES:  # pragma: no cover - the registry names only these
            raise ValueError(strategy)
        self.strategy = strategy
        self.refresh_every = refresh_every
        self.chunk = chunk

    @torch.no_grad()
    def mine_epoch(
        self, embeddings: torch.Tensor, labels: torch.Tensor, n_anchors: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Return ``n_anchors`` triplets (T x 3 indices into the training split)."""
        n = len(labels)
        dev = embeddings.device
        anchors = torch.randperm(n, generator=generator)[: min(n_anchors, n)].to(dev)
        out = []
        for start in range(0, len(anchors), self.chunk):
            a = anchors[start : start + self.chunk]
            d = self.distance(embeddings[a], embeddings)
            if self.distance.is_inverted:  # similarity: larger is closer; mine on "farness"
                d = -d
            same = labels[a].unsqueeze(1) == labels.unsqueeze(0)
            same[torch.arange(len(a), device=dev), a] = False
            u = torch.rand(d.shape, generator=generator).to(dev)
            p = torch.where(same, u, -1.0).argmax(1)  # uniform random positive
            has_pos = same.any(1)
            neg = labels[a].unsqueeze(1) != labels.unsqueeze(0)
            inf = d.new_full((), float("inf"))
            if self.strategy == "random":
                neg_idx = torch.where(neg, u, -1.0).argmax(1)
            else:
                hardest = torch.where(neg, d, inf).argmin(1)
                if self.strategy == "hard":
                    neg_idx = hardest
                else:
                    d_ap = d.gather(1, p.unsqueeze(1))
                    semi = neg & (d > d_ap)
                    cand = torch.where(semi, d, inf).argmin(1)
                    neg_idx = torch.where(semi.any(1), cand, hardest)
            keep = has_pos & neg.any(1)
            out.append(torch.stack([a, p, neg_idx], dim=1)[keep])
        return torch.cat(out) if out else torch.zeros(0, 3, dtype=torch.long, device=dev)
