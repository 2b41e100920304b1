"""TripletLoss and the distance registry against brute-force loops."""

from __future__ import annotations

import math

import pytest
import torch
from oracles import all_triplets
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance

from harness.errors import HarnessError
from harness.losses import DISTANCES, TripletLoss, get_distance

DISTANCE_NAMES = ("euclidean", "squared_euclidean", "cosine")


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def brute_triplet_losses(
    emb: torch.Tensor, triplets: list[tuple[int, int, int]], name: str, margin: float
) -> list[float]:
    """relu(d_ap - d_an + m) for distances, relu(s_an - s_ap + m) for cosine similarity."""
    rows = [_unit(r) for r in emb.double().tolist()]

    def d(i: int, j: int) -> float:
        if name == "cosine":
            return sum(a * b for a, b in zip(rows[i], rows[j]))
        sq = sum((a - b) ** 2 for a, b in zip(rows[i], rows[j]))
        return sq if name == "squared_euclidean" else math.sqrt(sq)

    out = []
    for a, p, n in triplets:
        v = d(a, n) - d(a, p) + margin if name == "cosine" else d(a, p) - d(a, n) + margin
        out.append(max(v, 0.0))
    return out


def as_tensors(triplets: list[tuple[int, int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    a, p, n = zip(*triplets) if triplets else ((), (), ())
    return (
        torch.tensor(a, dtype=torch.long),
        torch.tensor(p, dtype=torch.long),
        torch.tensor(n, dtype=torch.long),
    )


CASES = [
    (0, 5, 32, [0, 0, 1, 1, 2], 0.02),
    (1, 24, 16, [c for c in range(6) for _ in range(4)], 0.1),
    (2, 12, 3, [c for c in range(4) for _ in range(3)], 0.5),
]


@pytest.mark.parametrize("dist_name", DISTANCE_NAMES)
@pytest.mark.parametrize("seed, n, dim, labels, margin", CASES, ids=["5x32", "24x16", "12x3"])
def test_loss_is_mean_over_nonzero_triplets(
    dist_name: str, seed: int, n: int, dim: int, labels: list[int], margin: float
) -> None:
    emb = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    trips = all_triplets(labels)
    losses = brute_triplet_losses(emb, trips, dist_name, margin)
    positive = [v for v in losses if v > 0]
    assert 0 < len(positive) < len(losses)  # the filter matters on these inputs
    fn = TripletLoss(margin, get_distance(dist_name))
    value = fn(emb, torch.tensor(labels), as_tensors(trips))
    assert value.item() == pytest.approx(sum(positive) / len(positive), rel=1e-5, abs=1e-6)
    assert int(fn.active(emb, as_tensors(trips))) == len(positive)


@pytest.mark.parametrize("dist_name", DISTANCE_NAMES)
def test_loss_on_a_subset_of_triplets(dist_name: str) -> None:
    """Only the given triplets count, not every valid triplet of the batch."""
    emb = torch.randn(24, 16, generator=torch.Generator().manual_seed(3))
    labels = [c for c in range(6) for _ in range(4)]
    trips = all_triplets(labels)[::7]
    losses = [v for v in brute_triplet_losses(emb, trips, dist_name, 0.3) if v > 0]
    fn = TripletLoss(0.3, get_distance(dist_name))
    assert fn(emb, torch.tensor(labels), as_tensors(trips)).item() == pytest.approx(
        sum(losses) / len(losses), rel=1e-5
    )
    assert int(fn.active(emb, as_tensors(trips))) == len(losses)


def test_squared_euclidean_is_lp_power_2() -> None:
    emb = torch.randn(6, 5, generator=torch.Generator().manual_seed(4))
    sq, eu = get_distance("squared_euclidean"), get_distance("euclidean")
    assert isinstance(sq, LpDistance) and sq.power == 2 and sq.p == 2 and sq.normalize_embeddings
    assert isinstance(eu, LpDistance) and eu.power == 1 and eu.normalize_embeddings
    assert isinstance(get_distance("cosine"), CosineSimilarity)
    torch.testing.assert_close(sq(emb), eu(emb) ** 2)


@pytest.mark.parametrize("dist_name", DISTANCE_NAMES)
def test_loss_is_zero_and_inactive_when_every_triplet_is_satisfied(dist_name: str) -> None:
    # Two tight, far-apart clusters: every triplet clears the margin.
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]])
    labels = [0, 0, 1, 1]
    trips = as_tensors(all_triplets(labels))
    fn = TripletLoss(0.1, get_distance(dist_name))
    emb.requires_grad_(True)
    value = fn(emb, torch.tensor(labels), trips)
    assert value.item() == 0.0
    value.backward()  # a zero loss still has a graph
    assert int(fn.active(emb.detach(), trips)) == 0


@pytest.mark.parametrize("dist_name", DISTANCE_NAMES)
def test_active_excludes_exact_zero_loss(dist_name: str) -> None:
    """One-hot vectors: d_ap == d_an exactly, so with margin 0 the loss is 0, not active."""
    emb = torch.eye(4)
    labels = [0, 0, 1, 1]
    trips = as_tensors(all_triplets(labels))
    fn = TripletLoss(0.0, get_distance(dist_name))
    assert int(fn.active(emb, trips)) == 0
    assert fn(emb, torch.tensor(labels), trips).item() == 0.0
    assert int(TripletLoss(0.01, get_distance(dist_name)).active(emb, trips)) == len(trips[0])


def test_active_with_no_triplets() -> None:
    fn = TripletLoss(0.2, get_distance("cosine"))
    empty = torch.zeros(0, dtype=torch.long)
    emb = torch.randn(4, 3)
    assert int(fn.active(emb, (empty, empty, empty))) == 0
    assert fn(emb, torch.tensor([0, 0, 1, 1]), (empty, empty, empty)).item() == 0.0


@pytest.mark.parametrize("dist_name", DISTANCE_NAMES)
def test_loss_gradient_pulls_positive_in_and_pushes_negative_out(dist_name: str) -> None:
    emb = torch.randn(3, 4, generator=torch.Generator().manual_seed(5), requires_grad=True)
    trips = as_tensors([(0, 1, 2)])
    fn = TripletLoss(10.0, get_distance(dist_name))  # margin so large the triplet is always active
    fn(emb, torch.tensor([0, 0, 1]), trips).backward()
    with torch.no_grad():
        stepped = emb - 0.01 * emb.grad
    rows = lambda e: brute_triplet_losses(e, [(0, 1, 2)], dist_name, 10.0)[0]  # noqa: E731
    assert rows(stepped.detach()) < rows(emb.detach())


def test_unknown_distance_lists_known_names() -> None:
    with pytest.raises(HarnessError) as err:
        get_distance("manhattan")
    msg = str(err.value)
    assert "'manhattan'" in msg
    for name in DISTANCES.names():
        assert name in msg
