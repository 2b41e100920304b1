"""Own fused miners vs pytorch-metric-learning on fixed inputs: same triplets, same loss, same grads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from harness.losses import get_distance
from harness.mining import get_miner
from harness.mining.sampled import sample_negatives
from harness.registry import DISTANCES as REGISTERED

DISTANCES = REGISTERED.names()


def _batch(b: int = 24, d: int = 8, classes: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1).float()
    labels = torch.arange(classes).repeat_interleave(b // classes)
    return emb, labels


def _pml_reference(name: str, distance, margin: float):
    if name == "batch-hard":
        return pml_miners.BatchHardMiner(distance=distance)
    return pml_miners.TripletMarginMiner(margin=margin, type_of_triplets=name, distance=distance)


def _as_set(t: tuple[torch.Tensor, ...]) -> set[tuple[int, int, int]]:
    return set(zip(*(x.tolist() for x in t)))


@pytest.mark.parametrize("dist", DISTANCES)
@pytest.mark.parametrize("name", ["all", "semihard", "hard", "batch-hard"])
@pytest.mark.parametrize("seed", [0, 1])
def test_same_triplets_loss_and_gradient_as_pml(name: str, dist: str, seed: int) -> None:
    emb, labels = _batch(seed=seed)
    margin = 0.3 if dist != "squared_euclidean" else 0.5
    distance = get_distance(dist)
    ours = get_miner(name, distance, margin)
    ref = _pml_reference(name, distance, margin)
    ref_triplets = ref(emb, labels)
    assert _as_set(ours(emb, labels)) == _as_set(ref_triplets)
    assert len(ref_triplets[0]) > 0

    e1 = emb.clone().requires_grad_(True)
    loss, active, mined = ours.loss(e1, labels)
    loss.backward()
    e2 = emb.clone().requires_grad_(True)
    ref_loss = TripletMarginLoss(margin=margin, distance=distance)(e2, labels, ref_triplets)
    ref_loss.backward()
    assert torch.allclose(loss, ref_loss, atol=1e-5), (loss.item(), ref_loss.item())
    assert torch.allclose(e1.grad, e2.grad, atol=1e-5)
    assert int(mined) == len(ref_triplets[0])
    mat = distance(emb)
    a, p, n = ref_triplets
    v = distance.margin(mat[a, p], mat[a, n]) + margin
    assert int(active) == int((v > 0).sum())


def test_fused_loss_matches_pml_at_a_larger_batch() -> None:
    """B = 256 in P x K form: the interval/prefix-sum path stays exact where it matters."""
    emb, labels = _batch(b=256, d=32, classes=32, seed=3)
    for dist in DISTANCES:
        distance = get_distance(dist)
        for name in ("all", "semihard", "hard"):
            ours = get_miner(name, distance, 0.2).loss(emb, labels)[0]
            triplets = _pml_reference(name, distance, 0.2)(emb, labels)
            ref = TripletMarginLoss(margin=0.2, distance=distance)(emb, labels, triplets)
            assert torch.allclose(ours, ref, atol=1e-5), (dist, name, ours.item(), ref.item())


def test_no_triplets_gives_zero_loss_with_a_gradient() -> None:
    emb = F.normalize(
        torch.tensor([[1.0, 0.01, 0.0], [1.0, -0.01, 0.0], [0.0, 1.0, 0.01], [0.0, 1.0, -0.01]]), dim=1
    )
    labels = torch.tensor([0, 0, 1, 1])  # positives ~0.02 apart, negatives ~1.41: nothing is hard
    e = emb.clone().requires_grad_(True)
    loss, active, _ = get_miner("hard", get_distance("euclidean"), 0.01).loss(e, labels)
    loss.backward()
    assert loss.item() == 0.0 and int(active) == 0 and e.grad is not None


@pytest.mark.parametrize("name", ["random", "distance-weighted"])
def test_sampled_miners_loss_equals_pml_loss_on_their_triplets(name: str) -> None:
    emb, labels = _batch(b=32, d=16, classes=8)
    distance = get_distance("cosine")
    g1 = torch.Generator().manual_seed(7)
    g2 = torch.Generator().manual_seed(7)
    m1 = get_miner(name, distance, 0.2, g1)
    m2 = get_miner(name, distance, 0.2, g2)
    triplets = m1(emb, labels)
    loss, active, mined = m2.loss(emb, labels)  # same generator state: the same draws
    ref = TripletMarginLoss(margin=0.2, distance=distance)(emb, labels, triplets)
    assert torch.allclose(loss, ref, atol=1e-6)
    assert int(mined) == len(triplets[0]) == 32 * 3  # one triplet per ordered anchor-positive pair
    assert (labels[triplets[0]] == labels[triplets[1]]).all()
    assert (labels[triplets[0]] != labels[triplets[2]]).all()
    again = get_miner(name, distance, 0.2, torch.Generator().manual_seed(7))(emb, labels)
    assert all(torch.equal(x, y) for x, y in zip(triplets, again))


def test_distance_weighted_weights_equal_pml(monkeypatch: pytest.MonkeyPatch) -> None:
    emb, labels = _batch(b=40, d=16, classes=10, seed=5)
    captured = {}
    original = lmu.get_random_triplet_indices

    def capture(labels, ref_labels=None, t_per_anchor=None, weights=None):
        captured["w"] = weights
        return original(labels, ref_labels, t_per_anchor, weights)

    monkeypatch.setattr(pml_miners.distance_weighted_miner.lmu, "get_random_triplet_indices", capture)
    pml_miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)(emb, labels)
    ours = get_miner("distance-weighted", get_distance("euclidean"), 0.2)
    from harness.mining.base import masks

    w = ours.weights(emb, masks(labels)[1])
    w = w / w.sum(1, keepdim=True)
    ref = captured["w"]
    rows = torch.isfinite(ref).all(1)
    assert rows.sum() >= 30
    assert torch.allclose(w[rows], ref[rows], atol=1e-5)


def test_inverse_cdf_sampling_follows_the_weights() -> None:
    w = torch.tensor([[0.0, 1.0, 3.0, 0.0], [2.0, 0.0, 0.0, 2.0]]).repeat_interleave(1, 0)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_negatives(w, g) for _ in range(4000)])  # [T, 2, 4]
    row0 = torch.bincount(draws[:, 0].reshape(-1), minlength=4).double() / draws[:, 0].numel()
    row1 = torch.bincount(draws[:, 1].reshape(-1), minlength=4).double() / draws[:, 1].numel()
    assert torch.allclose(row0, torch.tensor([0.0, 0.25, 0.75, 0.0], dtype=torch.float64), atol=0.02)
    assert torch.allclose(row1, torch.tensor([0.5, 0.0, 0.0, 0.5], dtype=torch.float64), atol=0.02)


def test_pml_impl_is_still_available_for_reference() -> None:
    emb, labels = _batch()
    m = get_miner("semihard", get_distance("cosine"), 0.2, impl="pml")
    assert type(m).__name__ == "PMLMiner"
    ours = get_miner("semihard", get_distance("cosine"), 0.2)
    assert torch.allclose(m.loss(emb, labels)[0], ours.loss(emb, labels)[0], atol=1e-6)


@pytest.mark.parametrize("dist", DISTANCES)
@pytest.mark.parametrize("margin", [0.0, -0.1])
def test_hard_respects_a_non_positive_margin(dist: str, margin: float) -> None:
    emb, labels = _batch(b=24, d=4, classes=6, seed=2)
    distance = get_distance(dist)
    loss, active, mined = get_miner("hard", distance, margin).loss(emb, labels)
    triplets = _pml_reference("hard", distance, margin)(emb, labels)
    ref = TripletMarginLoss(margin=margin, distance=distance)(emb, labels, triplets)
    assert torch.allclose(loss, ref, atol=1e-5), (loss.item(), ref.item())
    assert int(mined) == len(triplets[0])
