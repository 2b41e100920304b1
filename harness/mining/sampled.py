"""The base of miners that draw one negative per anchor-positive pair from a per-anchor distribution.

Every (a, p) cell of the B x B grid gets a negative by inverse-CDF sampling (a ``searchsorted`` of
one uniform per cell into the anchor's cumulative weights): fixed size, O(B^2), no host sync, and
reproducible with a seeded generator. Cells that are not positive pairs, or whose anchor has no
admissible negative, are masked out.
"""

from __future__ import annotations

import torch

from harness.mining.base import Miner, Selection, masks


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
    """Subclasses write ``weights``: each anchor's unnormalised weights over the batch's negatives."""

    def weights(self, embeddings: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _generator(self, device: torch.device) -> torch.Generator | None:
        gen = self.generator
        return gen if gen is not None and gen.device.type == device.type else None

    def draw(self, batch: int, device: torch.device) -> torch.Tensor:
        return uniforms((batch, batch), self._generator(device), device)

    def select(
        self, embeddings: torch.Tensor, f: torch.Tensor, labels: torch.Tensor, u: torch.Tensor | None
    ) -> Selection:
        pos, neg = masks(labels)
        w = self.weights(embeddings, neg)
        n = sample_negatives(w, self._generator(w.device), u)
        valid = pos & (w.sum(1, keepdim=True) > 0)
        b = len(labels)
        a = torch.arange(b, device=labels.device).unsqueeze(1).expand(b, b)
        p = torch.arange(b, device=labels.device).unsqueeze(0).expand(b, b)
        return a.reshape(-1), p.reshape(-1), n.reshape(-1), valid.reshape(-1)
