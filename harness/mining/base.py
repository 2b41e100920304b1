"""The miner interface shared by online (in-batch) and offline (whole training set) strategies."""

from __future__ import annotations

import torch

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Miner:
    """Online miners map a batch's embeddings and labels to triplet indices into that batch.

    Offline miners (``offline = True``) instead implement ``mine_epoch`` over the embeddings of
    the whole training split; the trainer then feeds the mined triplets as batches.
    """

    name: str = "miner"
    offline: bool = False
    refresh_every: int = 1

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        raise NotImplementedError

    def mine_epoch(
        self, embeddings: torch.Tensor, labels: torch.Tensor, n_anchors: int, generator: torch.Generator
    ) -> torch.Tensor:
        raise NotImplementedError


def masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive mask without the diagonal, negative mask), both B x B bool."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same
