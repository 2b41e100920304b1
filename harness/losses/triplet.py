"""Triplet margin loss on explicit (anchor, positive, negative) indices."""

from __future__ import annotations

import torch
from pytorch_metric_learning.distances import BaseDistance
from pytorch_metric_learning.losses import TripletMarginLoss

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class TripletLoss:
    """PML's TripletMarginLoss (mean over non-zero-loss triplets) plus the statistics we log."""

    def __init__(self, margin: float, distance: BaseDistance) -> None:
        self.margin = margin
        self.distance = distance
        self.loss = TripletMarginLoss(margin=margin, distance=distance)

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor, triplets: Triplets) -> torch.Tensor:
        return self.loss(embeddings, labels, indices_tuple=triplets)

    @torch.no_grad()
    def active(self, embeddings: torch.Tensor, triplets: Triplets) -> torch.Tensor:
        """Number of triplets with non-zero loss (a tensor: no host sync inside the step)."""
        a, p, n = triplets
        if a.numel() == 0:
            return torch.zeros((), device=embeddings.device)
        mat = self.distance(embeddings)  # full matrix: pairwise_distance() ignores LpDistance's power
        ap, an = mat[a, p], mat[a, n]
        return (self.distance.margin(ap, an) + self.margin > 0).sum()
