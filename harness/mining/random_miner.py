"""One uniformly random negative per anchor-positive pair: the no-mining baseline."""

from __future__ import annotations

import torch

from harness.mining.base import Miner, Triplets, masks


class RandomMiner(Miner):
    name = "random"

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        pos, neg = masks(labels)
        a, p = torch.nonzero(pos, as_tuple=True)
        if a.numel() == 0 or not neg.any():
            empty = a[:0]
            return empty, empty, empty
        weights = neg[a].float()
        gen = (
            self.generator if self.generator is not None and self.generator.device == weights.device else None
        )
        n = torch.multinomial(weights, 1, generator=gen).squeeze(1)
        return a, p, n
