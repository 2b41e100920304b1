"""Batch-hard (Hermans et al.): each anchor with its farthest positive and closest negative."""

from __future__ import annotations

import torch
from pytorch_metric_learning.distances import BaseDistance

from harness.mining.base import LossOut, Miner, Triplets, farness, indexed_loss, masks


class BatchHardMiner(Miner):
    name = "batch-hard"

    def __init__(self, distance: BaseDistance, margin: float) -> None:
        self.distance, self.margin = distance, margin

    def _select(self, f: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pos, neg = masks(labels)
        fd = f.detach()
        inf = f.new_full((), float("inf"))  # no host-to-device copy: no sync
        p = torch.where(pos, fd, -inf).argmax(1)
        n = torch.where(neg, fd, inf).argmin(1)
        valid = pos.any(1) & neg.any(1)
        return torch.arange(len(f), device=f.device), p, n, valid

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor, u: torch.Tensor | None = None) -> LossOut:
        f = farness(self.distance, embeddings)
        a, p, n, valid = self._select(f, labels)
        return indexed_loss(f, a, p, n, valid, self.margin)

    @torch.no_grad()
    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        a, p, n, valid = self._select(farness(self.distance, embeddings), labels)
        return a[valid], p[valid], n[valid]
