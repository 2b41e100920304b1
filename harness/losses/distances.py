"""Distances (pytorch-metric-learning objects), each registered by name. PML distances hide which
way is "closer" (``is_inverted``, ``margin``), so neither the loss nor the miners branch on cosine
vs L2."""

from __future__ import annotations

from pytorch_metric_learning.distances import BaseDistance, CosineSimilarity, LpDistance

from harness.registry import DISTANCES


@DISTANCES.register("euclidean")
def euclidean() -> BaseDistance:
    return LpDistance(p=2, power=1, normalize_embeddings=True)


@DISTANCES.register("squared_euclidean")
def squared_euclidean() -> BaseDistance:
    return LpDistance(p=2, power=2, normalize_embeddings=True)


@DISTANCES.register("cosine")
def cosine() -> BaseDistance:
    return CosineSimilarity()


def get_distance(name: str) -> BaseDistance:
    return DISTANCES.get(name)()
