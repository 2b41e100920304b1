"""Checks the torch kNN and retrieval metrics against brute force and pytorch-metric-learning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from oracles import pml_accuracy

from harness.errors import ConfigError, DataError, HarnessError
from harness.evaluation import knn, retrieval_metrics
from harness.registry import DISTANCES as REGISTERED

DISTANCES = REGISTERED.names()


def _brute_dist(a: np.ndarray, b: np.ndarray, distance: str) -> float:
    """One pairwise value in float64 numpy, the reference the torch code must match: the registered
    distances score unit-normalised embeddings, and cosine is a similarity (larger is nearer)."""
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    if distance == "cosine":
        return float(a @ b)
    sq = float(((a - b) ** 2).sum())
    return math.sqrt(sq) if distance == "euclidean" else sq


def _order(pairs: list[tuple[float, int]], distance: str) -> list[tuple[float, int]]:
    """Nearest first: the largest similarity, or the smallest distance."""
    return sorted(pairs, key=lambda p: -p[0] if distance == "cosine" else p[0])


def _brute_knn(
    query: np.ndarray, reference: np.ndarray | None, k: int, distance: str
) -> tuple[np.ndarray, np.ndarray]:
    """Double loop over all pairs, dropping self by index when there is no separate reference."""
    ref = query if reference is None else reference
    dists, idxs = [], []
    for i, q in enumerate(query):
        cand = _order(
            [(_brute_dist(q, r, distance), j) for j, r in enumerate(ref) if reference is not None or j != i],
            distance,
        )
        dists.append([d for d, _ in cand[:k]])
        idxs.append([j for _, j in cand[:k]])
    return np.array(dists), np.array(idxs)


def _brute_metrics(x: np.ndarray, labels: np.ndarray, distance: str, ks: tuple[int, ...]) -> dict[str, float]:
    """Per-query loop definitions of Recall@K, MAP@R and R-precision, skipping lone-class queries."""
    recall = {k: [] for k in ks}
    aps, rps = [], []
    for i in range(len(x)):
        r = int((labels == labels[i]).sum()) - 1
        if r == 0:
            continue
        order = _order([(_brute_dist(x[i], x[j], distance), j) for j in range(len(x)) if j != i], distance)
        rel = [labels[j] == labels[i] for _, j in order]
        for k in ks:
            recall[k].append(float(any(rel[:k])))
        hits, ap = 0, 0.0
        for pos in range(r):
            if rel[pos]:
                hits += 1
                ap += hits / (pos + 1)
        aps.append(ap / r)
        rps.append(hits / r)
    out = {f"recall@{k}": float(np.mean(v)) for k, v in recall.items()}
    out["map@r"] = float(np.mean(aps))
    out["r_precision"] = float(np.mean(rps))
    return out


def _labels_with_singleton(rng: np.random.Generator, n: int = 60, classes: int = 7) -> np.ndarray:
    """n labels over `classes`, where the last class has exactly one member and the rest have several."""
    body = np.concatenate(
        [np.arange(classes - 1).repeat(2), rng.integers(0, classes - 1, n - 1 - 2 * (classes - 1))]
    )
    labels = np.concatenate([body, [classes - 1]])
    return rng.permutation(labels)


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("with_reference", [False, True])
def test_knn_matches_brute_force(distance: str, with_reference: bool) -> None:
    rng = np.random.default_rng(0)
    q = rng.normal(size=(37, 8)).astype(np.float32)
    ref = rng.normal(size=(29, 8)).astype(np.float32) if with_reference else None
    k = 6
    dist, idx = knn(
        torch.from_numpy(q), k, distance=distance, reference=None if ref is None else torch.from_numpy(ref)
    )
    want_d, want_i = _brute_knn(
        q.astype(np.float64), None if ref is None else ref.astype(np.float64), k, distance
    )
    assert dist.shape == (37, k) and idx.shape == (37, k)
    np.testing.assert_array_equal(idx.numpy(), want_i)
    np.testing.assert_allclose(dist.numpy(), want_d, rtol=1e-5, atol=1e-5)


def test_knn_excludes_self_by_index_not_by_zero_distance() -> None:
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    dist, idx = knn(x, 1, distance="euclidean")
    assert idx[:2, 0].tolist() == [1, 0]  # the duplicate is each other's neighbour at distance 0
    assert dist[:2, 0].tolist() == [0.0, 0.0]


def test_knn_rejects_k_too_large() -> None:
    with pytest.raises(ConfigError, match="only 4 other points"):
        knn(torch.randn(5, 3), 5)


@pytest.mark.parametrize("distance", DISTANCES)
def test_retrieval_metrics_match_brute_force(distance: str) -> None:
    rng = np.random.default_rng(1)
    labels = _labels_with_singleton(rng)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    ks = (1, 2, 4, 8)
    got = retrieval_metrics(torch.from_numpy(x), labels, distance=distance, ks=ks, nmi=False)
    want = _brute_metrics(x.astype(np.float64), labels, distance, ks)
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_retrieval_metrics_match_pytorch_metric_learning(distance: str) -> None:
    torch.manual_seed(2)
    labels = torch.from_numpy(_labels_with_singleton(np.random.default_rng(2), n=80, classes=9))
    x = torch.nn.functional.normalize(torch.randn(80, 16), dim=1)
    pml = pml_accuracy(distance).get_accuracy(
        x, labels
    )  # reference omitted: leave-one-out over the query set
    got = retrieval_metrics(x, labels, distance=distance, nmi=False)
    assert got["recall@1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)
    assert got["map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)
    assert got["r_precision"] == pytest.approx(pml["r_precision"], abs=1e-6)


@pytest.mark.parametrize("distance", DISTANCES)
def test_chunking_does_not_change_results(distance: str) -> None:
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=(53, 6)).astype(np.float32))
    ref = torch.from_numpy(rng.normal(size=(41, 6)).astype(np.float32))
    for reference in (None, ref):
        d_small, i_small = knn(x, 7, distance=distance, reference=reference, chunk=5)
        d_big, i_big = knn(x, 7, distance=distance, reference=reference, chunk=4096)
        assert torch.equal(i_small, i_big)
        # The same distances, computed in blocks of another shape: BLAS may sum in another order, so
        # they agree to float32 rounding relative to their size (distances here are O(1..10); an
        # absolute 1e-6 failed on another x86 machine at 1.9e-6), not bit for bit.
        torch.testing.assert_close(d_small, d_big, rtol=1e-5, atol=1e-6 * float(d_big.abs().max()))
    labels = rng.integers(0, 6, size=53)
    small = retrieval_metrics(x, labels, distance=distance, nmi=False, chunk=5)
    assert small == retrieval_metrics(x, labels, distance=distance, nmi=False, chunk=4096)


def test_unknown_distance_lists_known_ones() -> None:
    for call in (
        lambda: knn(torch.randn(4, 2), 1, distance="manhattan"),
        lambda: retrieval_metrics(torch.randn(4, 2), [0, 0, 1, 1], distance="manhattan"),
    ):
        with pytest.raises(HarnessError, match="unknown distance 'manhattan'") as info:
            call()
        for name in DISTANCES:
            assert name in str(info.value)


def test_nmi_of_perfect_clusters_is_one() -> None:
    rng = np.random.default_rng(4)
    centers = rng.normal(size=(5, 8)) * 20
    labels = np.repeat(np.arange(5), 12)
    x = torch.from_numpy(centers[labels] + rng.normal(scale=0.01, size=(60, 8))).float()
    for distance in DISTANCES:
        got = retrieval_metrics(x, labels, distance=distance, seed=0)
        assert got["nmi"] == pytest.approx(1.0, abs=1e-9)
        assert got["recall@1"] == got["map@r"] == got["r_precision"] == 1.0


def test_small_sets_clamp_k_and_bad_input_raises() -> None:
    x = torch.randn(4, 3)
    got = retrieval_metrics(x, np.array([0, 0, 1, 1]), ks=(1, 8), nmi=False)
    assert got["recall@8"] == 1.0  # every other point is within the top 3
    with pytest.raises(DataError, match="no class has two"):
        retrieval_metrics(x, np.arange(4), nmi=False)
    with pytest.raises(DataError, match="4 embeddings but 3 labels"):
        retrieval_metrics(x, np.array([0, 0, 1]), nmi=False)
    with pytest.raises(ConfigError, match="positive integers"):
        retrieval_metrics(x, np.array([0, 0, 1, 1]), ks=(0,), nmi=False)
