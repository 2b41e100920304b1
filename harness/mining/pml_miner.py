"""In-batch miners that pytorch-metric-learning already provides, behind our interface."""

from __future__ import annotations

from collections.abc import Callable

import torch
from pytorch_metric_learning import miners
from pytorch_metric_learning.distances import BaseDistance, LpDistance

from harness.losses.triplet import TripletLoss
from harness.mining.base import LossOut, Miner, Triplets


def _unit_sphere() -> LpDistance:
    # PML's distance-weighted miner samples by the density of unit-sphere Euclidean distances and
    # requires that distance; it is monotone in cosine, so only the loss uses the trial's.
    return LpDistance(normalize_embeddings=True, p=2, power=1)


def _margin_miner(kind: str) -> Callable[[BaseDistance, float], miners.BaseMiner]:
    return lambda d, m: miners.TripletMarginMiner(margin=m, type_of_triplets=kind, distance=d)


# Our miner name -> PML's miner, built for a distance and margin.
PML_MINERS: dict[str, Callable[[BaseDistance, float], miners.BaseMiner]] = {
    "all": _margin_miner("all"),
    "semihard": _margin_miner("semihard"),
    "hard": _margin_miner("hard"),
    "batch-hard": lambda d, m: miners.BatchHardMiner(distance=d),
    "distance-weighted": lambda d, m: miners.DistanceWeightedMiner(
        cutoff=0.5, nonzero_loss_cutoff=1.4, distance=_unit_sphere()
    ),
}


class PMLMiner(Miner):
    """PML's own miner and loss for one of our online miner names (see ``PML_MINERS``)."""

    def __init__(self, name: str, distance: BaseDistance, margin: float) -> None:
        super().__init__(distance, margin)
        self.name = name
        self.triplet_loss = TripletLoss(margin, distance)
        self.miner = PML_MINERS[name](distance, margin)

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        a, p, n = self.miner(embeddings, labels)
        return a, p, n

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor, u: torch.Tensor | None = None) -> LossOut:
        """PML's miner then PML's loss: the reference path (host syncs inside PML)."""
        triplets = self(embeddings.detach(), labels)
        loss = self.triplet_loss(embeddings, labels, triplets)
        mined = torch.tensor(triplets[0].numel(), device=embeddings.device)
        return loss, self.triplet_loss.active(embeddings.detach(), triplets), mined
