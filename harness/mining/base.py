"""The base of every miner, online (in-batch) and offline (over the whole training split).

An online miner is one registered subclass (``@MINERS.register("name")``) that writes ``select``:
for a batch's farness matrix, every candidate triplet as FIXED-SIZE index tensors with a validity
mask. The base turns that one method into both views a miner offers, and runs the checks and the
``no_grad`` once, as pytorch-metric-learning's ``BaseMiner`` does for its subclasses' ``mine``:

- ``loss(embeddings, labels)``: the triplet margin loss over the selected triplets (mean over the
  triplets with non-zero loss, as PML's TripletMarginLoss), plus the number of active and of mined
  triplets, all tensors: fixed-size work, O(B^2) memory, no host sync. The training step calls it.
- ``__call__(embeddings, labels)``: the selected triplets as index tensors (data-dependent size, so
  it syncs). Tests compare these sets with PML's miners.

A miner that never enumerates its triplets inside the loss (the fused margin miners) writes
``fused_loss`` and ``mine`` instead of ``select``. Offline miners (``offline = True``) write
``mine_epoch`` over the embeddings of the whole training split; the trainer feeds the mined
triplets as batches.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pytorch_metric_learning.distances import BaseDistance

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
LossOut = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # loss, n_active, n_mined
Selection = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # a, p, n, valid


class Miner:
    offline: ClassVar[bool] = False  # mines the whole training split between epochs (mine_epoch)
    # the reference() is pytorch-metric-learning's miner for the same triplets (tests compare the
    # sets); False: only a cost to compare with (PML has no equivalent), never a stand-in
    reference_is_equal: ClassVar[bool] = True
    refresh_every: int = 1  # offline miners: re-mine every N epochs
    name: str = "miner"  # the registry name it was built under (set by ``get_miner``)

    def __init__(
        self, distance: BaseDistance, margin: float, generator: torch.Generator | None = None
    ) -> None:
        self.distance, self.margin, self.generator = distance, margin, generator

    # --- what subclasses write -------------------------------------------------------------------

    def select(
        self, embeddings: torch.Tensor, f: torch.Tensor, labels: torch.Tensor, u: torch.Tensor | None
    ) -> Selection:
        """Candidate (anchor, positive, negative) index tensors of a fixed size and their validity,
        from detached ``embeddings`` and farness ``f``; ``u``: the uniforms ``draw`` made, if any."""
        raise NotImplementedError(f"{type(self).__name__} writes select, or fused_loss and mine")

    def reference(self) -> Any:
        """pytorch-metric-learning's miner this one is tested and benchmarked against, built for
        this miner's distance and margin (a ``pytorch_metric_learning.miners.BaseMiner``); None: PML
        has none (offline miners)."""
        return None

    def draw(self, batch: int, device: torch.device) -> torch.Tensor | None:
        """The random numbers one ``loss`` call consumes (None: it needs none). A compiled step
        draws them outside its graph and passes them in as ``u``."""
        return None

    def mine_epoch(
        self, embeddings: torch.Tensor, labels: torch.Tensor, n_anchors: int, generator: torch.Generator
    ) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} is an online miner")

    # --- what the base derives -------------------------------------------------------------------

    def fused_loss(
        self, embeddings: torch.Tensor, f: torch.Tensor, labels: torch.Tensor, u: torch.Tensor | None
    ) -> LossOut:
        a, p, n, valid = self.select(embeddings.detach(), f.detach(), labels, u)
        return indexed_loss(f, a, p, n, valid, self.margin)

    def mine(self, embeddings: torch.Tensor, f: torch.Tensor, labels: torch.Tensor) -> Triplets:
        a, p, n, valid = self.select(embeddings, f, labels, None)
        return a[valid], p[valid], n[valid]

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor, u: torch.Tensor | None = None) -> LossOut:
        _check(embeddings, labels)
        return self.fused_loss(embeddings, farness(self.distance, embeddings), labels, u)

    @torch.no_grad()
    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        _check(embeddings, labels)
        return self.mine(embeddings, farness(self.distance, embeddings), labels)


def _check(embeddings: torch.Tensor, labels: torch.Tensor) -> None:
    """Shapes only (host metadata: no sync, and nothing a compiled graph must trace)."""
    if embeddings.dim() != 2 or labels.dim() != 1 or len(embeddings) != len(labels):
        raise ValueError(
            f"a miner takes [B, D] embeddings and [B] labels, got {tuple(embeddings.shape)} and"
            f" {tuple(labels.shape)}"
        )


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
