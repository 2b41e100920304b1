"""Random negatives: the no-mining baseline."""

from __future__ import annotations

from typing import Any

import torch

from harness.mining.sampled import SampledMiner
from harness.registry import MINERS


@MINERS.register("random")
class RandomMiner(SampledMiner):
    """One uniformly random negative per anchor-positive pair. PML has no random-negative miner: its
    nearest cost, enumerating every triplet, is what the benchmark compares it with."""

    reference_is_equal = False

    def reference(self) -> Any:
        from pytorch_metric_learning import miners

        return miners.TripletMarginMiner(margin=self.margin, type_of_triplets="all", distance=self.distance)

    def weights(self, embeddings: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return neg.float()
