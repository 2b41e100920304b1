"""Brute-force retrieval oracles for the query/gallery tests: plain Python loops over every pair, in
float64 numpy, as PML's tests do. The code under test must match them on fixed small inputs."""

from __future__ import annotations

import math

import numpy as np


def brute_dist(a: np.ndarray, b: np.ndarray, distance: str) -> float:
    """One pairwise value: the registered distances score unit-normalised embeddings, and cosine is
    a similarity (larger is nearer)."""
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    if distance == "cosine":
        return float(a @ b)
    sq = float(((a - b) ** 2).sum())
    return math.sqrt(sq) if distance == "euclidean" else sq


def brute_neighbours(x: np.ndarray, i: int, candidates: list[int], distance: str) -> list[int]:
    """The candidates, nearest to row ``i`` first (ties by row index)."""
    scored = [(brute_dist(x[i], x[j], distance), j) for j in candidates]
    scored.sort(key=lambda p: (-p[0] if distance == "cosine" else p[0], p[1]))
    return [j for _, j in scored]


def brute_per_query(
    x: np.ndarray,
    labels: np.ndarray,
    distance: str,
    ks: tuple[int, ...],
    query: np.ndarray | None = None,
    gallery: np.ndarray | None = None,
) -> dict[str, list[float]]:
    """Per-query Recall@K hits, AP@R and R-precision by their definitions: each query row against the
    gallery rows other than itself, R = the gallery's other items of its class, R = 0 left out."""
    n = len(x)
    queries = range(n) if query is None else np.flatnonzero(query)
    gallery_rows = list(range(n)) if gallery is None else list(np.flatnonzero(gallery))
    out: dict[str, list[float]] = {f"recall@{k}": [] for k in ks} | {"map@r": [], "r_precision": []}
    for i in queries:
        candidates = [j for j in gallery_rows if j != i]
        r = sum(labels[j] == labels[i] for j in candidates)
        if r == 0:
            continue
        rel = [labels[j] == labels[i] for j in brute_neighbours(x, i, candidates, distance)]
        for k in ks:
            out[f"recall@{k}"].append(float(any(rel[:k])))
        hits, ap = 0, 0.0
        for pos in range(r):
            if rel[pos]:
                hits += 1
                ap += hits / (pos + 1)
        out["map@r"].append(ap / r)
        out["r_precision"].append(hits / r)
    return out
