"""faiss's exact flat indexes as the kNN backend: the same neighbours and metrics as the torch path,
and one clear line where faiss is missing or cannot do a distance exactly."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
from retrieval_oracles import brute_per_query

from harness.errors import ConfigError
from harness.evaluation import knn, per_query_scores, retrieval_metrics
from harness.evaluation.knn import faiss_available, resolve_backend
from harness.registry import DISTANCES as REGISTERED

DISTANCES = REGISTERED.names()
needs_faiss = pytest.mark.skipif(
    not faiss_available(), reason="faiss is not installed (pip install faiss-cpu)"
)


def _tie_free(n: int = 120, d: int = 16, seed: int = 30) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32))


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(b.abs().max())))


@needs_faiss
@pytest.mark.parametrize("distance", DISTANCES)
def test_faiss_finds_the_torch_neighbours(distance: str) -> None:
    x, ref = _tie_free(), _tie_free(n=90, seed=31)
    exclude = torch.where(torch.arange(120) < 40, torch.arange(120), -1)  # queries 0-39 are ref 0-39
    ref[:40] = x[:40]
    for kwargs in ({}, {"reference": ref}, {"reference": ref, "exclude": exclude}):
        s_t, i_t = knn(x, 10, distance, **kwargs)  # type: ignore[arg-type]
        s_f, i_f = knn(x, 10, distance, backend="faiss", **kwargs)  # type: ignore[arg-type]
        assert torch.equal(i_f, i_t), kwargs.keys()
        assert s_f.dtype == s_t.dtype
        if distance == "euclidean":  # a root near 0 (the duplicates) magnifies float32 rounding to
            s_f, s_t = s_f**2, s_t**2  # ~1e-3 either way; the squares are what both compute
        _close(s_f, s_t)


@needs_faiss
@pytest.mark.parametrize("distance", DISTANCES)
def test_faiss_metrics_equal_torch_metrics(distance: str) -> None:
    rng = np.random.default_rng(32)
    x = _tie_free(n=150, seed=33)
    labels = rng.integers(0, 20, size=150)
    query, gallery = rng.random(150) < 0.5, rng.random(150) < 0.7
    for masks in ({}, {"query": query, "gallery": gallery}):
        t = per_query_scores(x, labels, distance, **masks)  # type: ignore[arg-type]
        f = per_query_scores(x, labels, distance, backend="faiss", max_bytes=1, **masks)  # type: ignore[arg-type]
        assert t.keys() == f.keys()
        for key in t:
            np.testing.assert_array_equal(f[key], t[key], err_msg=key)
    auto = retrieval_metrics(x, labels, distance, nmi=False, backend="auto")
    assert auto == retrieval_metrics(x, labels, distance, nmi=False)


@needs_faiss
@pytest.mark.parametrize("distance", DISTANCES)
def test_faiss_puts_the_excluded_row_last_when_k_is_the_whole_gallery(distance: str) -> None:
    """A query outside a gallery of its own class needs all of it (k = gallery size); a query inside
    it then gets no k+1 search, and its own row must still count for nothing."""
    x = _tie_free(n=5, d=4, seed=34)
    labels = np.array([0, 0, 0, 0, 1])
    query = np.array([True, False, False, True, True])
    gallery = np.array([True, True, True, False, False])
    got = per_query_scores(x, labels, distance, query=query, gallery=gallery, backend="faiss")
    want = brute_per_query(x.numpy().astype(np.float64), labels, distance, (1, 2, 4, 8), query, gallery)
    for key, values in want.items():
        np.testing.assert_allclose(got[key], values, rtol=0, atol=1e-12, err_msg=key)


def test_a_missing_faiss_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # ``import faiss`` now raises ImportError
    with pytest.raises(ConfigError, match="pip install faiss-cpu") as info:
        knn(torch.randn(5, 3), 2, backend="faiss")
    assert "\n" not in str(info.value)
    x, labels = torch.randn(6, 3), np.array([0, 0, 1, 1, 2, 2])
    assert retrieval_metrics(x, labels, nmi=False, backend="auto") == retrieval_metrics(x, labels, nmi=False)


def test_a_distance_faiss_cannot_do_exactly_names_it_and_the_torch_backend() -> None:
    manhattan = LpDistance(p=1)
    with pytest.raises(ConfigError, match="'manhattan'.*backend: torch") as info:
        resolve_backend("faiss", manhattan, "manhattan")
    assert "\n" not in str(info.value)
    assert resolve_backend("auto", manhattan, "manhattan") == "torch"  # auto: whatever is exact


def test_auto_keeps_gpu_embeddings_on_the_torch_backend() -> None:
    cosine = CosineSimilarity()
    assert resolve_backend("auto", cosine, "cosine", torch.device("cuda", 0)) == "torch"
    want = "faiss" if faiss_available() else "torch"
    assert resolve_backend("auto", cosine, "cosine", torch.device("cpu")) == want


def test_an_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown kNN backend 'annoy'; known backends: torch, faiss, auto"):
        knn(torch.randn(5, 3), 2, backend="annoy")
