"""Random negatives: the no-mining baseline."""

from __future__ import annotations

import torch

from harness.mining.sampled import SampledMiner
from harness.registry import MINERS


@MINERS.register("random")
class RandomMiner(SampledMiner):
    """One uniformly random negative per anchor-positive pair."""

    def weights(self, embeddings: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return neg.float()
