"""Distance-weighted negatives (Wu et al., "Sampling Matters in Deep Embedding Learning", 2017)."""

from __future__ import annotations

from typing import Any

import torch
from pytorch_metric_learning.distances import BaseDistance, LpDistance

from harness.mining.sampled import SampledMiner
from harness.registry import MINERS


@MINERS.register("distance-weighted")
class DistanceWeightedMiner(SampledMiner):
    """Wu et al. 2017: negatives drawn with probability ~ 1 / q(d), q the density of distances
    between random points on the unit sphere in D dimensions, d clipped at ``cutoff``; pairs
    farther than ``nonzero_loss_cutoff`` (zero loss anyway) get no weight. Weights as in
    pytorch-metric-learning's DistanceWeightedMiner (on unit-sphere Euclidean distances, whatever
    the loss's distance), normalised per anchor in log space for stability."""

    def __init__(
        self,
        distance: BaseDistance,
        margin: float,
        generator: torch.Generator | None = None,
        cutoff: float = 0.5,
        nonzero_loss_cutoff: float = 1.4,
    ) -> None:
        super().__init__(distance, margin, generator)
        self.cutoff, self.nonzero_loss_cutoff = cutoff, nonzero_loss_cutoff
        self.sphere = LpDistance(normalize_embeddings=True, p=2, power=1)

    def reference(self) -> Any:
        # PML's miner samples on unit-sphere Euclidean distances and requires that distance
        from pytorch_metric_learning import miners

        return miners.DistanceWeightedMiner(
            cutoff=self.cutoff, nonzero_loss_cutoff=self.nonzero_loss_cutoff, distance=self.sphere
        )

    def weights(self, embeddings: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        d = float(embeddings.shape[1])
        mat = self.sphere(embeddings).clamp(min=self.cutoff)
        log_w = (2.0 - d) * torch.log(mat) - ((d - 3) / 2) * torch.log(1.0 - 0.25 * mat**2)
        ok = neg & (mat < self.nonzero_loss_cutoff) & torch.isfinite(log_w)
        log_w = torch.where(ok, log_w, -torch.inf)
        row_max = log_w.amax(1, keepdim=True)
        w = torch.exp(log_w - torch.where(torch.isfinite(row_max), row_max, 0.0))
        return torch.where(ok, w, 0.0)
