"""In-batch miners that pytorch-metric-learning already provides, behind our interface."""

from __future__ import annotations

import torch
from pytorch_metric_learning import miners
from pytorch_metric_learning.distances import BaseDistance, LpDistance

from harness.losses.triplet import TripletLoss
from harness.mining.base import LossOut, Miner, Triplets


class PMLMiner(Miner):
    """all / semihard / hard (TripletMarginMiner), batch-hard, distance-weighted."""

    def __init__(self, name: str, distance: BaseDistance, margin: float, **params: float) -> None:
        self.name = name
        self.distance, self.margin = distance, margin
        self.triplet_loss = TripletLoss(margin, distance)
        if name in ("all", "semihard", "hard"):
            self.miner = miners.TripletMarginMiner(margin=margin, type_of_triplets=name, distance=distance)
        elif name == "batch-hard":
            self.miner = miners.BatchHardMiner(distance=distance)
        elif name == "distance-weighted":
            # PML's implementation samples by the density of unit-sphere Euclidean distances and
            # requires that distance; it is monotone in cosine, so only the loss uses the trial's.
            self.miner = miners.DistanceWeightedMiner(
                cutoff=params.get("cutoff", 0.5),
                nonzero_loss_cutoff=params.get("nonzero_loss_cutoff", 1.4),
                distance=LpDistance(normalize_embeddings=True, p=2, power=1),
            )
        else:  # pragma: no cover - the registry only constructs known names
            raise ValueError(name)

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        a, p, n = self.miner(embeddings, labels)
        return a, p, n

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor, u: torch.Tensor | None = None) -> LossOut:
        """PML's miner then PML's loss: the reference path (host syncs inside PML)."""
        triplets = self(embeddings.detach(), labels)
        loss = self.triplet_loss(embeddings, labels, triplets)
        mined = torch.tensor(triplets[0].numel(), device=embeddings.device)
        return loss, self.triplet_loss.active(embeddings.detach(), triplets), mined
