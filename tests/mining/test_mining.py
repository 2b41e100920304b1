"""Miners against brute-force loops over PML's definitions, on tiny fixed inputs."""

from __future__ import annotations

import math

import pytest
import torch
from oracles import all_triplets

from harness.errors import HarnessError
from harness.losses import get_distance
from harness.mining import MINERS, get_miner, offline_miners

OFFLINE = offline_miners()

DISTANCE_NAMES = ("euclidean", "squared_euclidean", "cosine")


# --- brute-force helpers ---------------------------------------------------------------------------


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def brute_dist(emb: torch.Tensor, name: str) -> list[list[float]]:
    """Pairwise distance (or, for cosine, similarity) in float64 Python loops."""
    rows = [_unit(r) for r in emb.double().tolist()]
    n = len(rows)
    out = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            if name == "cosine":
                out[i][j] = sum(a * b for a, b in zip(rows[i], rows[j]))
            else:
                sq = sum((a - b) ** 2 for a, b in zip(rows[i], rows[j]))
                out[i][j] = sq if name == "squared_euclidean" else math.sqrt(sq)
    return out


def farness(d: list[list[float]], name: str) -> list[list[float]]:
    """A matrix where larger always means farther (similarities negated)."""
    return [[-x for x in row] for row in d] if name == "cosine" else d


def triplet_margin(d: list[list[float]], name: str, a: int, p: int, n: int) -> float:
    """PML's ``triplet_margin``: how much farther the negative is than the positive."""
    return d[a][p] - d[a][n] if name == "cosine" else d[a][n] - d[a][p]


def brute_margin_miner(
    d: list[list[float]], name: str, labels: list[int], margin: float, kind: str
) -> set[tuple[int, int, int]]:
    """TripletMarginMiner: all = tm <= margin; hard = and tm <= 0; semihard = and tm > 0."""
    out = set()
    for a, p, n in all_triplets(labels):
        tm = triplet_margin(d, name, a, p, n)
        keep = tm <= margin
        if kind == "hard":
            keep = keep and tm <= 0
        elif kind == "semihard":
            keep = keep and tm > 0
        if keep:
            out.add((a, p, n))
    return out


def as_set(triplets: tuple[torch.Tensor, ...]) -> set[tuple[int, int, int]]:
    a, p, n = (t.tolist() for t in triplets)
    assert len(a) == len(p) == len(n)
    s = set(zip(a, p, n))
    assert len(s) == len(a), "a miner returned duplicate triplets"
    return s


SMALL_LABELS = [0, 0, 1, 1, 2]
MED_LABELS = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def small_emb(seed: int, n: int, dim: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


# --- TripletMarginMiner wrappers: all / semihard / hard --------------------------------------------


@pytest.mark.parametrize("dist_name", DISTANCE_NAMES)
@pytest.mark.parametrize("kind", ["all", "semihard", "hard"])
@pytest.mark.parametrize(
    "emb, labels, margin",
    [
        (small_emb(0, 5, 32), SMALL_LABELS, 0.2),
        (small_emb(1, 12, 4), MED_LABELS, 0.3),
        (small_emb(2, 12, 4), MED_LABELS, 0.05),
    ],
    ids=["5x32", "12x4-m0.3", "12x4-m0.05"],
)
def test_margin_miners_match_brute_force(
    emb: torch.Tensor, labels: list[int], margin: float, kind: str, dist_name: str
) -> None:
    d = brute_dist(emb, dist_name)
    # The inputs must not sit on a decision boundary, or float rounding would decide the test.
    for a, p, n in all_triplets(labels):
        tm = triplet_margin(d, dist_name, a, p, n)
        assert abs(tm - margin) > 1e-5 and abs(tm) > 1e-5
    expected = brute_margin_miner(d, dist_name, labels, margin, kind)
    miner = get_miner(kind, get_distance(dist_name), margin)
    got = as_set(miner(emb, torch.tensor(labels)))
    assert got == expected


@pytest.mark.parametrize("dist_name", DISTANCE_NAMES)
def test_margin_miner_sets_are_non_trivial(dist_name: str) -> None:
    """hard and semihard partition all, and on the 12x4 input none of them is empty or everything."""
    emb, labels = small_emb(1, 12, 4), torch.tensor(MED_LABELS)
    sets = {
        k: as_set(get_miner(k, get_distance(dist_name), 0.3)(emb, labels))
        for k in ("all", "hard", "semihard")
    }
    assert sets["hard"] and sets["semihard"]
    assert sets["hard"] | sets["semihard"] == sets["all"]
    assert not sets["hard"] & sets["semihard"]
    assert len(sets["all"]) < len(all_triplets(MED_LABELS))


def test_margin_miner_tie_conventions() -> None:
    """Exact ties (one-hot vectors): tm == 0 == margin is in "all" and "hard", never in "semihard"."""
    emb = torch.eye(4)
    labels = torch.tensor([0, 0, 1, 1])
    everything = set(all_triplets(labels.tolist()))
    for dist_name in DISTANCE_NAMES:
        dist = get_distance(dist_name)
        assert as_set(get_miner("all", dist, 0.0)(emb, labels)) == everything
        assert as_set(get_miner("hard", dist, 0.0)(emb, labels)) == everything
        assert as_set(get_miner("semihard", dist, 0.0)(emb, labels)) == set()


# --- batch-hard ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dist_name", DISTANCE_NAMES)
@pytest.mark.parametrize("seed", [0, 1])
def test_batch_hard_uses_farthest_positive_and_closest_negative(dist_name: str, seed: int) -> None:
    emb = small_emb(seed, 12, 6)
    labels = MED_LABELS
    far = farness(brute_dist(emb, dist_name), dist_name)
    a, p, n = get_miner("batch-hard", get_distance(dist_name), 0.2)(emb, torch.tensor(labels))
    assert sorted(a.tolist()) == list(range(12))  # every anchor has a positive and a negative
    for ai, pi, ni in zip(a.tolist(), p.tolist(), n.tolist()):
        pos = [j for j in range(12) if j != ai and labels[j] == labels[ai]]
        neg = [j for j in range(12) if labels[j] != labels[ai]]
        assert pi == max(pos, key=lambda j: far[ai][j])
        assert ni == min(neg, key=lambda j: far[ai][j])


def test_batch_hard_skips_anchors_without_positive() -> None:
    emb = small_emb(3, 5, 32)
    a, p, n = get_miner("batch-hard", get_distance("euclidean"), 0.2)(emb, torch.tensor(SMALL_LABELS))
    assert sorted(a.tolist()) == [0, 1, 2, 3]  # anchor 4 is alone in its class


# --- random ----------------------------------------------------------------------------------------


def test_random_miner_one_triplet_per_ordered_pair() -> None:
    labels = torch.tensor(MED_LABELS + [4])  # the last one has no positive
    emb = small_emb(4, len(labels), 8)
    miner = get_miner("random", get_distance("cosine"), 0.2, torch.Generator().manual_seed(0))
    a, p, n = miner(emb, labels)
    pairs = list(zip(a.tolist(), p.tolist()))
    lab = labels.tolist()
    expected = [(i, j) for i in range(len(lab)) for j in range(len(lab)) if i != j and lab[i] == lab[j]]
    assert sorted(pairs) == sorted(expected)
    assert all(lab[q] != lab[i] for i, q in zip(a.tolist(), n.tolist()))


def test_random_miner_is_deterministic_for_a_seeded_generator() -> None:
    labels = torch.tensor(MED_LABELS)
    emb = small_emb(5, 12, 8)
    dist = get_distance("euclidean")
    negatives = [
        get_miner("random", dist, 0.2, torch.Generator().manual_seed(s))(emb, labels)[2] for s in (7, 7, 8)
    ]
    assert torch.equal(negatives[0], negatives[1])
    assert not torch.equal(negatives[0], negatives[2])


def test_random_miner_covers_every_negative() -> None:
    labels = torch.tensor(SMALL_LABELS)
    emb = small_emb(6, 5, 32)
    miner = get_miner("random", get_distance("euclidean"), 0.2, torch.Generator().manual_seed(1))
    seen: dict[int, set[int]] = {}
    for _ in range(200):
        a, _, n = miner(emb, labels)
        for ai, ni in zip(a.tolist(), n.tolist()):
            seen.setdefault(ai, set()).add(ni)
    lab = SMALL_LABELS
    assert seen == {i: {j for j in range(5) if lab[j] != lab[i]} for i in range(4)}


def test_random_miner_empty_without_pairs() -> None:
    emb = small_emb(7, 4, 8)
    miner = get_miner("random", get_distance("euclidean"), 0.2)
    for labels in ([0, 1, 2, 3], [0, 0, 0, 0]):
        a, p, n = miner(emb, torch.tensor(labels))
        assert a.numel() == p.numel() == n.numel() == 0


# --- offline ---------------------------------------------------------------------------------------


def check_offline_triplets(trip: torch.Tensor, labels: list[int]) -> None:
    assert trip.dtype == torch.long and trip.dim() == 2 and trip.shape[1] == 3
    for a, p, n in trip.tolist():
        assert p != a and labels[p] == labels[a]
        assert labels[n] != labels[a]


BLOB_LABELS = [c for c in range(5) for _ in range(4)]  # 20 points, 5 classes


@pytest.mark.parametrize("name", OFFLINE)
@pytest.mark.parametrize("dist_name", DISTANCE_NAMES)
def test_offline_miner_shapes_and_validity(name: str, dist_name: str) -> None:
    emb = small_emb(8, 20, 16)
    labels = torch.tensor(BLOB_LABELS)
    miner = get_miner(name, get_distance(dist_name), 0.2)
    assert miner.offline is True
    for n_anchors in (7, 20, 50):
        trip = miner.mine_epoch(emb, labels, n_anchors, torch.Generator().manual_seed(0))
        assert len(trip) == min(n_anchors, 20)
        assert len(set(trip[:, 0].tolist())) == len(trip)  # anchors are sampled without replacement
        check_offline_triplets(trip, BLOB_LABELS)


@pytest.mark.parametrize("dist_name", DISTANCE_NAMES)
def test_offline_hard_negative_is_closest_over_the_whole_set(dist_name: str) -> None:
    emb = small_emb(9, 20, 16)
    far = farness(brute_dist(emb, dist_name), dist_name)
    trip = get_miner("offline-hard", get_distance(dist_name), 0.2).mine_epoch(
        emb, torch.tensor(BLOB_LABELS), 20, torch.Generator().manual_seed(1)
    )
    for a, _, n in trip.tolist():
        neg = [j for j in range(20) if BLOB_LABELS[j] != BLOB_LABELS[a]]
        assert n == min(neg, key=lambda j: far[a][j])


def brute_semihard(far: list[list[float]], labels: list[int], a: int, p: int) -> tuple[int, bool]:
    """(expected negative, whether a semihard one existed)."""
    neg = [j for j in range(len(labels)) if labels[j] != labels[a]]
    semi = [j for j in neg if far[a][j] > far[a][p]]
    if semi:
        return min(semi, key=lambda j: far[a][j]), True
    return min(neg, key=lambda j: far[a][j]), False


@pytest.mark.parametrize("dist_name", DISTANCE_NAMES)
def test_offline_semihard_matches_brute_force(dist_name: str) -> None:
    emb = small_emb(10, 20, 3)  # low dim: positives are often far, so both branches occur
    far = farness(brute_dist(emb, dist_name), dist_name)
    branches = set()
    for seed in range(4):
        trip = get_miner("offline-semihard", get_distance(dist_name), 0.2).mine_epoch(
            emb, torch.tensor(BLOB_LABELS), 20, torch.Generator().manual_seed(seed)
        )
        check_offline_triplets(trip, BLOB_LABELS)
        for a, p, n in trip.tolist():
            expected, found = brute_semihard(far, BLOB_LABELS, a, p)
            assert n == expected
            branches.add(found)
    assert branches == {True, False}


@pytest.mark.parametrize("dist_name", DISTANCE_NAMES)
def test_offline_semihard_falls_back_to_hardest(dist_name: str) -> None:
    """Each positive is antipodal (the farthest possible point): no negative is farther."""
    emb = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.6, 0.8], [-0.6, -0.8]])
    labels = torch.tensor([0, 0, 1, 1])
    trip = get_miner("offline-semihard", get_distance(dist_name), 0.2).mine_epoch(
        emb, labels, 4, torch.Generator().manual_seed(0)
    )
    hardest = {0: 2, 1: 3, 2: 0, 3: 1}
    assert sorted(trip.tolist()) == [[a, a ^ 1, hardest[a]] for a in range(4)]


@pytest.mark.parametrize("name", OFFLINE)
@pytest.mark.parametrize("dist_name", ["euclidean", "cosine"])
def test_offline_chunking_does_not_change_the_result(name: str, dist_name: str) -> None:
    emb = small_emb(11, 20, 8)
    labels = torch.tensor(BLOB_LABELS)
    out = []
    for chunk in (3, 1024):
        miner = get_miner(name, get_distance(dist_name), 0.2)
        miner.chunk = chunk  # type: ignore[attr-defined]
        out.append(miner.mine_epoch(emb, labels, 20, torch.Generator().manual_seed(3)))
    assert torch.equal(out[0], out[1])


def test_offline_random_covers_positives_and_negatives() -> None:
    emb = small_emb(12, 20, 8)
    labels = torch.tensor(BLOB_LABELS)
    miner = get_miner("offline-random", get_distance("euclidean"), 0.2)
    gen = torch.Generator().manual_seed(0)
    pos: dict[int, set[int]] = {}
    neg: dict[int, set[int]] = {}
    for _ in range(150):
        for a, p, n in miner.mine_epoch(emb, labels, 20, gen).tolist():
            pos.setdefault(a, set()).add(p)
            neg.setdefault(a, set()).add(n)
    lab = BLOB_LABELS
    for a in range(20):
        assert pos[a] == {j for j in range(20) if j != a and lab[j] == lab[a]}
        assert neg[a] == {j for j in range(20) if lab[j] != lab[a]}


def test_offline_refresh_every_comes_from_params() -> None:
    miner = get_miner("offline-hard", get_distance("cosine"), 0.2, refresh_every=3)
    assert miner.offline and miner.refresh_every == 3
    assert get_miner("semihard", get_distance("cosine"), 0.2).offline is False


# --- registry --------------------------------------------------------------------------------------


def test_unknown_miner_lists_known_names() -> None:
    with pytest.raises(HarnessError) as err:
        get_miner("hardest", get_distance("cosine"), 0.2)
    msg = str(err.value)
    assert "'hardest'" in msg
    for name in MINERS.names():
        assert name in msg
