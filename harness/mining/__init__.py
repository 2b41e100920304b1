"""Miners: each registers itself (``@MINERS.register("semihard")``) in its own module of this package.

``impl="own"`` (default) are this package's fused, sync-free miners; ``impl="pml"`` wraps
pytorch-metric-learning's miners, the reference they are tested and benchmarked against.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning.distances import BaseDistance

from harness.errors import ConfigError
from harness.mining.base import LossOut, Miner, Triplets
from harness.params import is_offline
from harness.registry import MINERS


def online_miners() -> tuple[str, ...]:
    return tuple(n for n in MINERS.names() if not is_offline(n))


def offline_miners() -> tuple[str, ...]:
    return tuple(n for n in MINERS.names() if is_offline(n))


def get_miner(
    name: str,
    distance: BaseDistance,
    margin: float,
    generator: torch.Generator | None = None,
    impl: str = "own",
    refresh_every: int = 1,
) -> Miner:
    """``get_miner("semihard", distance, margin)``; an unknown name lists the known ones."""
    entry = MINERS.entry(name)
    if impl not in ("own", "pml"):
        raise ConfigError(f"unknown miner implementation {impl!r}; known: own, pml")
    extra = {"refresh_every": refresh_every} if entry.target.offline else {}
    miner: Miner = entry.target(distance, margin, generator, **entry.options, **extra)
    miner.name = name
    if impl == "pml" and miner.reference_is_equal and (reference := miner.reference()) is not None:
        from harness.mining.pml_miner import PMLMiner

        return PMLMiner(miner, reference)  # where PML has no equal miner, the own one is the path
    return miner


__all__ = ["MINERS", "LossOut", "Miner", "Triplets", "get_miner", "offline_miners", "online_miners"]
