"""Miner registry: config names -> online (in-batch) and offline (whole-set) strategies.

``impl="own"`` (default) are this package's fused, sync-free miners; ``impl="pml"`` wraps
pytorch-metric-learning's miners, the reference they are tested and benchmarked against.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning.distances import BaseDistance

from harness.errors import ConfigError, unknown_name
from harness.mining.base import LossOut, Miner, Triplets
from harness.mining.batch_hard import BatchHardMiner
from harness.mining.offline import OfflineMiner
from harness.mining.pml_miner import PMLMiner
from harness.mining.sampled import DistanceWeightedMiner, RandomMiner
from harness.mining.triplet_margin import TripletMarginMiner
from harness.names import MINERS, OFFLINE_MINERS, ONLINE_MINERS

ONLINE = ONLINE_MINERS
OFFLINE = OFFLINE_MINERS


def get_miner(
    name: str,
    distance: BaseDistance,
    margin: float,
    generator: torch.Generator | None = None,
    impl: str = "own",
    **params: float,
) -> Miner:
    """``get_miner("semihard", distance, margin)``; unknown names list the known ones."""
    if name not in MINERS:
        raise unknown_name("miner", name, list(MINERS))
    refresh_every = int(params.pop("refresh_every", 1))
    if impl == "pml" and name in ONLINE and name != "random":
        return PMLMiner(name, distance, margin, **params)
    if impl not in ("own", "pml"):
        raise ConfigError(f"unknown miner implementation {impl!r}; known: own, pml")
    if name in ("all", "semihard", "hard"):
        return TripletMarginMiner(name, distance, margin)
    if name == "batch-hard":
        return BatchHardMiner(distance, margin)
    if name == "random":
        return RandomMiner(distance, margin, generator)
    if name == "distance-weighted":
        return DistanceWeightedMiner(distance, margin, generator, **params)
    return OfflineMiner(name.removeprefix("offline-"), distance, margin, refresh_every)


__all__ = ["MINERS", "OFFLINE", "ONLINE", "LossOut", "Miner", "Triplets", "get_miner"]
