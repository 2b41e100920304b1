"""Miner registry: config names -> online (in-batch) and offline (whole-set) strategies."""

from __future__ import annotations

import torch
from pytorch_metric_learning.distances import BaseDistance

from harness.errors import unknown_name
from harness.mining.base import Miner, Triplets
from harness.mining.offline import OfflineMiner
from harness.mining.pml_miner import PMLMiner
from harness.mining.random_miner import RandomMiner

ONLINE = ("all", "semihard", "hard", "batch-hard", "distance-weighted", "random")
OFFLINE = ("offline-hard", "offline-semihard", "offline-random")
MINERS = ONLINE + OFFLINE


def get_miner(
    name: str,
    distance: BaseDistance,
    margin: float,
    generator: torch.Generator | None = None,
    **params: float,
) -> Miner:
    """``get_miner("semihard", distance, margin)``; unknown names list the known ones."""
    if name == "random":
        return RandomMiner(generator)
    if name in ONLINE:
        return PMLMiner(name, distance, margin, **params)
    if name in OFFLINE:
        return OfflineMiner(name.removeprefix("offline-"), distance, int(params.get("refresh_every", 1)))
    raise unknown_name("miner", name, list(MINERS))


__all__ = ["MINERS", "OFFLINE", "ONLINE", "Miner", "Triplets", "get_miner"]
