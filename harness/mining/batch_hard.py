"""Batch-hard (Hermans et al.): each anchor with its farthest positive and closest negative."""

from __future__ import annotations

from typing import Any

import torch

from harness.mining.base import Miner, Selection, masks
from harness.registry import MINERS


@MINERS.register("batch-hard")
class BatchHardMiner(Miner):
    def reference(self) -> Any:
        from pytorch_metric_learning import miners

        return miners.BatchHardMiner(distance=self.distance)

    def select(
        self, embeddings: torch.Tensor, f: torch.Tensor, labels: torch.Tensor, u: torch.Tensor | None
    ) -> Selection:
        pos, neg = masks(labels)
        inf = f.new_full((), float("inf"))  # no host-to-device copy: no sync
        p = torch.where(pos, f, -inf).argmax(1)
        n = torch.where(neg, f, inf).argmin(1)
        valid = pos.any(1) & neg.any(1)
        return torch.arange(len(f), device=f.device), p, n, valid
