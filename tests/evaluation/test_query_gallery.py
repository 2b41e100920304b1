"""The query/gallery protocol: queries scored against a gallery, own rows excluded by index, checked
against a brute-force loop and pytorch-metric-learning's AccuracyCalculator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracles import pml_accuracy
from retrieval_oracles import brute_neighbours, brute_per_query

from harness.errors import ConfigError, DataError
from harness.evaluation import knn, per_query_scores, retrieval_metrics
from harness.registry import DISTANCES as REGISTERED

DISTANCES = REGISTERED.names()
KS = (1, 2, 4, 8)


def _fixed_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """40 rows: queries 0-19, gallery 12-39 (12-19 are both), with a query-only class (row 0), a
    class whose only gallery item is the query itself (row 13), and two exact duplicates of the same
    class (14 = 25: a query also in the gallery; 5 = 30: a query outside it)."""
    rng = np.random.default_rng(10)
    x = rng.normal(size=(40, 6))
    labels = rng.integers(0, 6, size=40)
    labels[0], labels[13] = 8, 9
    labels[25], labels[30] = labels[14], labels[5]
    x[25], x[30] = x[14], x[5]
    query = np.zeros(40, dtype=bool)
    query[:20] = True
    gallery = np.zeros(40, dtype=bool)
    gallery[12:] = True
    return x.astype(np.float32), labels, query, gallery


@pytest.mark.parametrize("distance", DISTANCES)
def test_query_gallery_scores_match_brute_force(distance: str) -> None:
    x, labels, query, gallery = _fixed_split()
    got = per_query_scores(torch.from_numpy(x), labels, distance, KS, query=query, gallery=gallery)
    want = brute_per_query(x.astype(np.float64), labels, distance, KS, query, gallery)
    assert len(want["map@r"]) == 18  # rows 0 (no gallery item of its class) and 13 (only itself) left out
    for key, values in want.items():
        np.testing.assert_allclose(got[key], values, rtol=0, atol=1e-12, err_msg=key)
    means = retrieval_metrics(
        torch.from_numpy(x), labels, distance, KS, nmi=False, query=query, gallery=gallery
    )
    assert means == pytest.approx({key: float(np.mean(v)) for key, v in want.items()}, abs=1e-12)


def test_a_duplicate_in_the_gallery_is_found_at_rank_one() -> None:
    x, labels, query, gallery = _fixed_split()
    got = per_query_scores(torch.from_numpy(x), labels, "euclidean", (1,), query=query, gallery=gallery)
    kept = [i for i in range(20) if i not in (0, 13)]
    assert got["recall@1"][kept.index(14)] == 1.0  # 25, its copy, not 14 itself
    assert got["recall@1"][kept.index(5)] == 1.0  # 30, its copy


def test_one_mask_alone_defaults_the_other_to_every_row() -> None:
    x, labels, query, gallery = _fixed_split()
    t = torch.from_numpy(x)
    for q, g in ((query, None), (None, gallery)):
        got = per_query_scores(t, labels, "cosine", KS, query=q, gallery=g)
        want = brute_per_query(x.astype(np.float64), labels, "cosine", KS, q, g)
        for key, values in want.items():
            np.testing.assert_allclose(got[key], values, rtol=0, atol=1e-12, err_msg=key)
    everyone = np.ones(40, dtype=bool)
    loo = per_query_scores(t, labels, "cosine", KS)
    both = per_query_scores(t, labels, "cosine", KS, query=everyone, gallery=everyone)
    assert loo.keys() == both.keys() and all(np.array_equal(loo[k], both[k]) for k in loo)


@pytest.mark.parametrize("distance", DISTANCES)
def test_a_query_outside_a_gallery_of_its_own_class_ranks_all_of_it(distance: str) -> None:
    """R can be the whole gallery for a query outside it; a query inside it then has its own row
    last (k = every gallery row), which must count for nothing."""
    rng = np.random.default_rng(11)
    x = torch.from_numpy(rng.normal(size=(5, 4)).astype(np.float32))
    labels = np.array([0, 0, 0, 0, 1])
    query = np.array([True, False, False, True, True])
    gallery = np.array([True, True, True, False, False])
    got = per_query_scores(x, labels, distance, KS, query=query, gallery=gallery)
    want = brute_per_query(x.numpy().astype(np.float64), labels, distance, KS, query, gallery)
    for key, values in want.items():
        np.testing.assert_allclose(got[key], values, rtol=0, atol=1e-12, err_msg=key)
    assert got["r_precision"].tolist() == [1.0, 1.0]  # row 0: 2 of 2 others, row 3: all 3


@pytest.mark.parametrize("distance", DISTANCES)
def test_knn_exclude_masks_one_reference_row_per_query(distance: str) -> None:
    rng = np.random.default_rng(12)
    q = rng.normal(size=(9, 5))
    ref = np.concatenate([q[:4], rng.normal(size=(8, 5))])  # queries 0-3 are reference rows 0-3
    exclude = torch.tensor([0, 1, 2, 3, -1, -1, -1, -1, -1])
    _, idx = knn(torch.from_numpy(q), 6, distance, torch.from_numpy(ref), exclude=exclude)
    both = np.concatenate([q, ref])  # the oracle's rows: queries 0-8, then the reference
    for i in range(9):
        candidates = [9 + j for j in range(12) if j != int(exclude[i])]
        want = [j - 9 for j in brute_neighbours(both, i, candidates, distance)[:6]]
        assert idx[i].tolist() == want, i


def test_knn_exclude_masks_by_index_so_a_duplicate_stays() -> None:
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    dist, idx = knn(x, 1, "euclidean", reference=x.clone(), exclude=torch.tensor([0, 1, 2]))
    assert idx[:, 0].tolist() == [1, 0, 0] and dist[:2, 0].tolist() == [0.0, 0.0]


def test_knn_exclude_checks_its_input() -> None:
    q, ref = torch.randn(3, 2), torch.randn(4, 2)
    with pytest.raises(DataError, match="one reference row"):
        knn(q, 1, reference=ref, exclude=torch.tensor([0, 1]))
    with pytest.raises(DataError, match="outside -1..3"):
        knn(q, 1, reference=ref, exclude=torch.tensor([0, 1, 4]))
    with pytest.raises(DataError, match="needs a reference"):
        knn(q, 1, exclude=torch.tensor([0, 1, 2]))
    with pytest.raises(ConfigError, match="only 3 reference points"):
        knn(q, 4, reference=ref, exclude=torch.tensor([0, -1, -1]))
    assert knn(q, 4, reference=ref, exclude=torch.full((3,), -1))[1].shape == (3, 4)


def test_bad_masks_and_empty_retrieval_raise_one_line() -> None:
    x, labels = torch.randn(6, 3), np.array([0, 0, 1, 1, 2, 2])
    with pytest.raises(DataError, match="boolean mask over the 6 embeddings"):
        retrieval_metrics(x, labels, nmi=False, query=np.arange(6))
    with pytest.raises(DataError, match="boolean mask over the 6 embeddings"):
        retrieval_metrics(x, labels, nmi=False, gallery=np.ones(5, dtype=bool))
    with pytest.raises(DataError, match="gallery mask selects no embeddings"):
        retrieval_metrics(x, labels, nmi=False, gallery=np.zeros(6, dtype=bool))
    only_self = np.array([True, False, True, False, False, False])
    with pytest.raises(DataError, match="no query has a same-class gallery item"):
        retrieval_metrics(x, labels, nmi=False, query=only_self, gallery=only_self)


def _pml(query, query_labels, reference, reference_labels, ref_includes_query: bool, distance: str) -> dict:
    return pml_accuracy(distance).get_accuracy(
        query, query_labels, reference, reference_labels, ref_includes_query
    )


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("protocol", ["queries in the gallery", "disjoint", "leave-one-out"])
def test_query_gallery_matches_pytorch_metric_learning(distance: str, protocol: str) -> None:
    """PML's ``ref_includes_query=True`` means query i IS reference row i (its first len(query) rows,
    its own row dropped from a k+1 search); False means no query is in the reference. A reference
    omitted is leave-one-out. Queries whose class the reference lacks (here class 9) are left out."""
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(90, 12, generator=gen)
    labels = torch.randint(0, 9, (90,), generator=gen)
    labels[7] = 9  # a query class with no other member anywhere
    n_q = 30
    query = torch.zeros(90, dtype=torch.bool)
    query[:n_q] = True
    if protocol == "queries in the gallery":
        gallery = torch.ones(90, dtype=torch.bool)
        pml = _pml(x[:n_q], labels[:n_q], x, labels, True, distance)
    elif protocol == "disjoint":
        gallery = ~query
        pml = _pml(x[:n_q], labels[:n_q], x[n_q:], labels[n_q:], False, distance)
    else:
        query = gallery = None
        pml = _pml(x, labels, None, None, False, distance)
    got = retrieval_metrics(x, labels, distance, nmi=False, query=query, gallery=gallery)
    assert got["recall@1"] == pytest.approx(pml["precision_at_1"], abs=1e-9)
    assert got["map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-9)
    assert got["r_precision"] == pytest.approx(pml["r_precision"], abs=1e-9)
