"""Oracles shared by the tests: brute-force loops (as PML's tests do) and pytorch-metric-learning's
own retrieval accuracy, the reference the harness's metrics are checked against."""

from __future__ import annotations

from typing import Any


def all_triplets(labels: list[int]) -> list[tuple[int, int, int]]:
    """Every (anchor, positive, negative) index triple of a batch."""
    n = len(labels)
    return [
        (a, p, q)
        for a in range(n)
        for p in range(n)
        for q in range(n)
        if p != a and labels[p] == labels[a] and labels[q] != labels[a]
    ]


def pml_accuracy(distance: str) -> Any:
    """PML's ``AccuracyCalculator`` for P@1 (= R@1), MAP@R and R-precision under a harness distance
    name (``cosine``, ``euclidean``, ``squared_euclidean``), exact kNN over every item (max_bin_count)."""
    import torch
    from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    measure = {
        "cosine": CosineSimilarity(),
        "euclidean": LpDistance(),
        "squared_euclidean": LpDistance(power=2),
    }
    return AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
        k="max_bin_count",
        device=torch.device("cpu"),
        knn_func=CustomKNN(measure[distance]),
    )
