"""The reference path: a miner's pytorch-metric-learning equivalent (``Miner.reference``) with PML's
own loss, behind our interface (``get_miner(..., impl="pml")``)."""

from __future__ import annotations

from typing import Any

import torch

from harness.losses.triplet import TripletLoss
from harness.mining.base import LossOut, Miner, Triplets


class PMLMiner(Miner):
    """PML's miner ``reference`` and PML's loss, for the miner it stands in for."""

    def __init__(self, of: Miner, reference: Any) -> None:
        super().__init__(of.distance, of.margin)
        self.name = of.name
        self.triplet_loss = TripletLoss(of.margin, of.distance)
        self.miner = reference

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        a, p, n = self.miner(embeddings, labels)
        return a, p, n

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor, u: torch.Tensor | None = None) -> LossOut:
        """PML's miner then PML's loss: the reference path (host syncs inside PML)."""
        triplets = self(embeddings.detach(), labels)
        loss = self.triplet_loss(embeddings, labels, triplets)
        mined = torch.tensor(triplets[0].numel(), device=embeddings.device)
        return loss, self.triplet_loss.active(embeddings.detach(), triplets), mined
