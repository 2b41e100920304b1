"""Evaluation memory is bounded by a byte budget: query blocks sized from it, the metrics reduced
block by block, and the result the same for any budget."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from torch import Tensor

import harness.evaluation.metrics as metrics_module
from harness.errors import ConfigError
from harness.evaluation import knn, per_query_scores, retrieval_metrics
from harness.evaluation.knn import TOPK_BYTES_PER_ENTRY, chunk_rows
from harness.registry import DISTANCES as REGISTERED

DISTANCES = REGISTERED.names()
knn_module = importlib.import_module("harness.evaluation.knn")  # the package's ``knn`` is the function


def _data(n: int = 97, seed: int = 20) -> tuple[Tensor, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.normal(size=(n, 7)).astype(np.float32))
    labels = rng.integers(0, 9, size=n)
    query = rng.random(n) < 0.5
    gallery = rng.random(n) < 0.7
    return x, labels, query, gallery


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key.startswith("recall@"):
            assert np.array_equal(a[key], b[key]), key  # hits: 0/1 per query, bit for bit
        else:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-12, atol=0, err_msg=key)


def test_chunk_rows_follow_the_byte_budget() -> None:
    per_row = 1000 * 4 + 10 * TOPK_BYTES_PER_ENTRY
    assert chunk_rows(1000, 10, 4, chunk=4096, max_bytes=7 * per_row) == 7
    assert chunk_rows(1000, 10, 4, chunk=5, max_bytes=7 * per_row) == 5  # ``chunk`` caps it
    assert chunk_rows(1000, 10, 4, chunk=4096, max_bytes=1) == 1  # never below one row
    assert chunk_rows(1000, 10, 4, chunk=4096, max_bytes=7 * per_row, score_copies=2) == 3
    # SOP's test set under the default budget: about 1,100 rows of float32 scores per block
    assert 1000 < chunk_rows(60_502, 12, 4, 4096, knn_module.DEFAULT_MAX_BYTES) < 1200


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("split", [False, True])
def test_a_tiny_budget_gives_the_same_scores(distance: str, split: bool) -> None:
    x, labels, query, gallery = _data()
    masks = {"query": query, "gallery": gallery} if split else {}
    small = per_query_scores(x, labels, distance, max_bytes=1, **masks)  # one query row per block
    big = per_query_scores(x, labels, distance, **masks)
    _assert_same(small, big)
    d_small, i_small = knn(x, 9, distance, max_bytes=1)
    d_big, i_big = knn(x, 9, distance)
    assert torch.equal(i_small, i_big)
    torch.testing.assert_close(d_small, d_big, rtol=1e-5, atol=1e-6 * float(d_big.abs().max()))


class _Recording:
    """A registered distance whose blocks are recorded: the rows each one scored against the references."""

    def __init__(self, inner: object, seen: list[tuple[int, int]]) -> None:
        self.inner, self.seen = inner, seen

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def compute_mat(self, q: Tensor, ref: Tensor) -> Tensor:
        self.seen.append((q.shape[0], ref.shape[0]))
        return self.inner.compute_mat(q, ref)  # type: ignore[attr-defined]


@pytest.mark.parametrize("distance", ["cosine", "squared_euclidean"])
def test_the_blocks_really_are_bounded(distance: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget is injected and the scored blocks are observed: no block holds more rows than the
    budget allows, the scores of every block fit in it, and the metrics are those of one big block."""
    seen: list[tuple[int, int]] = []
    real = metrics_module.get_distance
    monkeypatch.setattr(metrics_module, "get_distance", lambda name: _Recording(real(name), seen))
    x, labels, query, gallery = _data(n=300, seed=21)
    n_gallery, n_query = int(gallery.sum()), int(query.sum())
    own = query & gallery
    r = np.array([(labels[gallery] == labels[i]).sum() - own[i] for i in np.flatnonzero(query)])
    k = max(8, int(r.max()))  # the kNN's k: the largest cut-off or the largest R
    copies = 2 if distance == "squared_euclidean" else 1  # ``scores ** 2`` is a second block
    budget = 3 * (copies * n_gallery * 4 + k * TOPK_BYTES_PER_ENTRY)  # room for exactly 3 query rows
    bounded = per_query_scores(x, labels, distance, max_bytes=budget, query=query, gallery=gallery)
    rows = [r for r, _ in seen]
    assert {ref for _, ref in seen} == {n_gallery}
    assert sum(rows) == n_query and max(rows) == 3 and len(rows) == -(-n_query // 3)
    assert max(rows) * copies * n_gallery * 4 <= budget
    seen.clear()
    whole = per_query_scores(x, labels, distance, query=query, gallery=gallery)
    assert [r for r, _ in seen] == [n_query]  # the default budget: one block for a set this small
    _assert_same(bounded, whole)


def test_the_metrics_never_hold_an_n_by_k_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """The metrics consume the kNN block by block: no top-k list longer than one block exists, even
    with a class so large that k (its R) is most of the set."""
    lengths: list[int] = []
    real = knn_module._torch_search

    def recording(ref: Tensor, k: int, measure: object) -> object:
        search = real(ref, k, measure)  # type: ignore[arg-type]

        def inner(q: Tensor, excl: Tensor | None) -> tuple[Tensor, Tensor]:
            s, i = search(q, excl)
            lengths.append(i.shape[0])
            return s, i

        return inner

    monkeypatch.setattr(knn_module, "_torch_search", recording)
    rng = np.random.default_rng(22)
    x = torch.from_numpy(rng.normal(size=(400, 5)).astype(np.float32))
    labels = np.where(np.arange(400) < 300, 0, rng.integers(1, 20, size=400))  # R = 299 for 300 queries
    got = retrieval_metrics(
        x, labels, "cosine", nmi=False, max_bytes=40 * (400 * 4 + 299 * TOPK_BYTES_PER_ENTRY)
    )
    assert max(lengths) == 40 and sum(lengths) == 400
    assert 0 < got["map@r"] < 1


def test_budget_and_chunk_must_be_positive() -> None:
    x, labels = torch.randn(6, 3), np.array([0, 0, 1, 1, 2, 2])
    for kwargs in ({"max_bytes": 0}, {"chunk": 0}):
        with pytest.raises(ConfigError, match="must be a positive integer"):
            retrieval_metrics(x, labels, nmi=False, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_bytes must be a positive integer"):
        knn(x, 1, max_bytes=-1)
