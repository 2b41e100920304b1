"""The miner interface shared by online (in-batch) and offline (whole training set) strategies.

An online miner offers two views of the same selection:
- ``loss(embeddings, labels)``: the triplet margin loss over the mined triplets (mean over the
  triplets with non-zero loss, as pytorch-metric-learning's TripletMarginLoss), plus the number of
  active and of mined triplets, all as tensors: fixed-size work, O(B^2) memory, no host sync.
  The trainer calls this.
- ``__call__(embeddings, labels)``: the mined triplets as index tensors (data-dependent size, so it
  syncs). Tests compare these sets with pytorch-metric-learning's miners.

Offline miners (``offline = True``) implement ``mine_epoch`` over the embeddings of the whole
training split; the trainer feeds the mined triplets as batches.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning.distances import BaseDistance

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
LossOut = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # loss, n_active, n_mined


class Miner:
    name: str = "miner"
    offline: bool = False
    refresh_every: int = 1
    distance: BaseDistance
    margin: float

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        raise NotImplementedError

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor, u: torch.Tensor | None = None) -> LossOut:
        """``u``: the uniforms a sampled miner would draw itself (``draw``), passed in by a compiled
        step that keeps random draws outside its graph; other miners ignore it."""
        raise NotImplementedError

    def draw(self, batch: int, device: torch.device) -> torch.Tensor | None:
        """The random numbers one ``loss`` call consumes (None: it needs none)."""
        return None

    def mine_epoch(
        self, embeddings: torch.Tensor, labels: torch.Tensor, n_anchors: int, generator: torch.Generator
    ) -> torch.Tensor:
        raise NotImplementedError


def masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive mask without the diagonal, negative mask), both B x B bool."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def farness(
    distance: BaseDistance, embeddings: torch.Tensor, ref: torch.Tensor | None = None
) -> torch.Tensor:
    """The distance matrix with "larger = farther" for every distance (similarities negated).

    With f = farness, the triplet violation is f_ap - f_an + margin for cosine and L2 alike,
    exactly ``distance.margin(ap, an) + margin`` as pytorch-metric-learning computes it.
    """
    mat = distance(embeddings, ref)
    return -mat if distance.is_inverted else mat


def indexed_loss(
    f: torch.Tensor, a: torch.Tensor, p: torch.Tensor, n: torch.Tensor, valid: torch.Tensor, margin: float
) -> LossOut:
    """Triplet margin loss on fixed-size index tensors with a validity mask (no host sync)."""
    v = f[a, p] - f[a, n] + margin
    losses = torch.relu(v) * valid
    active = (losses > 0).sum()
    return losses.sum() / active.clamp(min=1), active, valid.sum()
