"""Miners that draw one negative per anchor-positive pair from a per-anchor distribution.

Every (a, p) cell of the B x B grid gets a negative by inverse-CDF sampling (a ``searchsorted`` of
one uniform per cell into the anchor's cumulative weights): fixed size, O(B^2), no host sync, and
reproducible with a seeded generator. Cells that are not positive pairs, or whose anchor has no
admissible negative, are masked out.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning.distances import BaseDistance, LpDistance

from harness.mining.base import LossOut, Miner, Triplets, farness, indexed_loss, masks


def uniforms(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)


def sample_negatives(
    weights: torch.Tensor, generator: torch.Generator | None, u: torch.Tensor | None = None
) -> torch.Tensor:
    """N[a, j] ~ weights[a, :] for every cell (rows need not be normalised; zero rows give junk).
    ``u``: the cells' uniforms, if drawn already (else drawn here from ``generator``)."""
    cdf = weights.double().cumsum(1)
    total = cdf[:, -1:]
    if u is None:
        u = uniforms(tuple(weights.shape), generator, weights.device)
    idx = torch.searchsorted(cdf, (u * total).contiguous(), right=True)
    return idx.clamp(max=weights.shape[1] - 1)


class SampledMiner(Miner):
    generator: torch.Generator | None = None

    def weights(self, embeddings: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _generator(self, device: torch.device) -> torch.Generator | None:
        gen = self.generator
        return gen if gen is not None and gen.device.type == device.type else None

    def draw(self, batch: int, device: torch.device) -> torch.Tensor:
        return uniforms((batch, batch), self._generator(device), device)

    def _select(
        self, embeddings: torch.Tensor, labels: torch.Tensor, u: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        pos, neg = masks(labels)
        w = self.weights(embeddings.detach(), neg)
        n = sample_negatives(w, self._generator(w.device), u)
        valid = pos & (w.sum(1, keepdim=True) > 0)
        b = len(labels)
        a = torch.arange(b, device=labels.device).unsqueeze(1).expand(b, b)
        p = torch.arange(b, device=labels.device).unsqueeze(0).expand(b, b)
        return a.reshape(-1), p.reshape(-1), n.reshape(-1), valid.reshape(-1)

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor, u: torch.Tensor | None = None) -> LossOut:
        a, p, n, valid = self._select(embeddings, labels, u)
        return indexed_loss(farness(self.distance, embeddings), a, p, n, valid, self.margin)

    @torch.no_grad()
    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        a, p, n, valid = self._select(embeddings, labels)
        return a[valid], p[valid], n[valid]


class RandomMiner(SampledMiner):
    """One uniformly random negative per anchor-positive pair: the no-mining baseline."""

    name = "random"

    def __init__(
        self, distance: BaseDistance, margin: float, generator: torch.Generator | None = None
    ) -> None:
        self.distance, self.margin, self.generator = distance, margin, generator

    def weights(self, embeddings: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return neg.float()


class DistanceWeightedMiner(SampledMiner):
    """Wu et al. 2017: negatives drawn with probability ~ 1 / q(d), q the density of distances
    between random points on the unit sphere in D dimensions, d clipped at ``cutoff``; pairs
    farther than ``nonzero_loss_cutoff`` (zero loss anyway) get no weight. Weights as in
    pytorch-metric-learning's DistanceWeightedMiner (on unit-sphere Euclidean distances, whatever
    the loss's distance), normalised per anchor in log space for stability."""

    name = "distance-weighted"

    def __init__(
        self,
        distance: BaseDistance,
        margin: float,
        generator: torch.Generator | None = None,
        cutoff: float = 0.5,
        nonzero_loss_cutoff: float = 1.4,
    ) -> None:
        self.distance, self.margin, self.generator = distance, margin, generator
        self.cutoff, self.nonzero_loss_cutoff = cutoff, nonzero_loss_cutoff
        self.sphere = LpDistance(normalize_embeddings=True, p=2, power=1)

    def weights(self, embeddings: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        d = float(embeddings.shape[1])
        mat = self.sphere(embeddings).clamp(min=self.cutoff)
        log_w = (2.0 - d) * torch.log(mat) - ((d - 3) / 2) * torch.log(1.0 - 0.25 * mat**2)
        ok = neg & (mat < self.nonzero_loss_cutoff) & torch.isfinite(log_w)
        log_w = torch.where(ok, log_w, -torch.inf)
        row_max = log_w.amax(1, keepdim=True)
        w = torch.exp(log_w - torch.where(torch.isfinite(row_max), row_max, 0.0))
        return torch.where(ok, w, 0.0)
