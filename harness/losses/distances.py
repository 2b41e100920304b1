"""Distance registry. PML distances hide which way is "closer" (``is_inverted``, ``margin``),
so neither the loss nor the miners branch on cosine vs L2."""

from __future__ import annotations

from collections.abc import Callable

from pytorch_metric_learning.distances import BaseDistance, CosineSimilarity, LpDistance

from harness.errors import unknown_name

DISTANCES: dict[str, Callable[[], BaseDistance]] = {
    "euclidean": lambda: LpDistance(p=2, power=1, normalize_embeddings=True),
    "squared_euclidean": lambda: LpDistance(p=2, power=2, normalize_embeddings=True),
    "cosine": lambda: CosineSimilarity(),
}


def get_distance(name: str) -> BaseDistance:
    if name not in DISTANCES:
        raise unknown_name("distance", name, list(DISTANCES))
    return DISTANCES[name]()
