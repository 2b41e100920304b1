"""P x K sampler, class-disjoint splits and batched transforms on tiny inputs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import make_cub

from harness.data import ImageList, get_dataset
from harness.data.sampler import PKSampler
from harness.data.splits import make_split
from harness.data.transforms import center_crop, normalize, random_resized_crop_flip
from harness.errors import ConfigError, DataError

# --- PKSampler -------------------------------------------------------------------------------------

# 6 classes of 3..8 images, shuffled so class members are not contiguous; class 30 has < K images.
LABELS = np.random.default_rng(0).permutation(np.repeat([10, 20, 30, 40, 50, 60], [5, 6, 3, 8, 7, 4]))


def epochs(sampler: PKSampler, n: int) -> list[list[np.ndarray]]:
    return [list(sampler) for _ in range(n)]


@pytest.mark.parametrize("p, k", [(2, 2), (3, 4), (6, 2), (4, 5)])
def test_pk_batches_have_p_distinct_classes_of_k(p: int, k: int) -> None:
    sampler = PKSampler(LABELS, p, k, seed=1)
    assert len(sampler) == len(LABELS) // (p * k)
    for epoch in epochs(sampler, 3):
        assert len(epoch) == len(sampler)
        for batch in epoch:
            assert batch.shape == (p * k,)
            assert batch.min() >= 0 and batch.max() < len(LABELS)
            counts = Counter(LABELS[batch].tolist())
            assert len(counts) == p and set(counts.values()) == {k}
            # K distinct images whenever the class has at least K of them
            for c in counts:
                members = batch[LABELS[batch] == c]
                if (LABELS == c).sum() >= k:
                    assert len(set(members.tolist())) == k


def test_pk_sampler_is_deterministic_per_seed() -> None:
    a = epochs(PKSampler(LABELS, 3, 2, seed=5), 2)
    b = epochs(PKSampler(LABELS, 3, 2, seed=5), 2)
    c = epochs(PKSampler(LABELS, 3, 2, seed=6), 2)
    flat = [np.concatenate(e) for e in (a[0], a[1], b[0], b[1], c[0], c[1])]
    assert np.array_equal(flat[0], flat[2]) and np.array_equal(flat[1], flat[3])
    assert not np.array_equal(flat[0], flat[4])
    assert not np.array_equal(flat[0], flat[1])  # a new epoch draws new batches


def test_pk_sampler_uses_every_class_and_image() -> None:
    sampler = PKSampler(LABELS, 2, 2, seed=0)
    seen = np.concatenate([b for e in epochs(sampler, 40) for b in e])
    assert set(seen.tolist()) == set(range(len(LABELS)))


@pytest.mark.parametrize("p, k", [(7, 2), (2, 1), (1, 4), (6, 0)])
def test_pk_sampler_rejects_impossible_batches(p: int, k: int) -> None:
    with pytest.raises(ConfigError) as err:
        PKSampler(LABELS, p, k)
    assert "batch_p" in str(err.value)


def test_pk_sampler_error_names_the_class_count() -> None:
    with pytest.raises(ConfigError, match="6 training classes"):
        PKSampler(LABELS, 7, 2)


# --- make_split ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cub(tmp_path_factory: pytest.TempPathFactory) -> ImageList:
    root = tmp_path_factory.mktemp("cub")
    make_cub(root, per_class=3)
    return get_dataset("cub").load(root, strict_counts=False)


def split_classes(images: ImageList, idx: np.ndarray) -> set[int]:
    return set(images.labels[idx].tolist())


def test_split_is_class_disjoint_and_follows_the_protocol(cub: ImageList) -> None:
    spec = get_dataset("cub")
    s = make_split(cub, spec.train_classes, spec.test_classes, val_fraction=0.2, seed=0)
    tr, va, te = (split_classes(cub, i) for i in (s.train, s.val, s.test))
    assert not (tr & va or tr & te or va & te)
    assert va <= set(range(1, 101)) and tr <= set(range(1, 101))
    assert tr | va == set(range(1, 101))
    assert te == set(range(101, 201))
    assert len(va) == 20 and len(tr) == 80
    # every image lands in exactly one split, each split holds ALL images of its classes
    assert sorted(np.concatenate([s.train, s.val, s.test]).tolist()) == list(range(len(cub)))
    for idx, classes in ((s.train, tr), (s.val, va), (s.test, te)):
        assert sorted(idx.tolist()) == np.flatnonzero(np.isin(cub.labels, list(classes))).tolist()
    m = s.manifest
    assert m["classes"] == {"train": sorted(tr), "val": sorted(va), "test": sorted(te)}
    assert m["num_images"] == {"train": 240, "val": 60, "test": 300}
    assert m["num_classes"] == {"train": 80, "val": 20, "test": 100}


@pytest.mark.parametrize("fraction, n_val", [(0.1, 10), (0.35, 35), (0.5, 50), (0.01, 2)])
def test_split_val_fraction(cub: ImageList, fraction: float, n_val: int) -> None:
    s = make_split(cub, range(1, 101), range(101, 201), val_fraction=fraction, seed=3)
    assert len(split_classes(cub, s.val)) == n_val
    assert len(split_classes(cub, s.train)) == 100 - n_val


def test_split_is_seed_deterministic(cub: ImageList) -> None:
    a = make_split(cub, range(1, 101), range(101, 201), seed=1)
    b = make_split(cub, range(1, 101), range(101, 201), seed=1)
    c = make_split(cub, range(1, 101), range(101, 201), seed=2)
    assert np.array_equal(a.val, b.val) and np.array_equal(a.train, b.train)
    assert a.manifest == b.manifest
    assert not np.array_equal(a.val, c.val)
    assert a.manifest["hash"] != c.manifest["hash"]
    assert np.array_equal(a.test, c.test)  # the test split never depends on the seed


def test_trainval_is_train_union_val(cub: ImageList) -> None:
    s = make_split(cub, range(1, 101), range(101, 201), seed=4)
    assert s.trainval.tolist() == sorted(set(s.train.tolist()) | set(s.val.tolist()))
    assert split_classes(cub, s.trainval) == set(range(1, 101))
    assert np.array_equal(s.labels(s.val), cub.labels[s.val])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_val_fraction(cub: ImageList, fraction: float) -> None:
    with pytest.raises(ConfigError, match="val_fraction"):
        make_split(cub, range(1, 101), range(101, 201), val_fraction=fraction)


def test_split_rejects_overlapping_class_lists(cub: ImageList) -> None:
    with pytest.raises(DataError, match="class-disjoint"):
        make_split(cub, range(1, 101), range(95, 201))


def test_split_rejects_incomplete_copies(tmp_path: Path) -> None:
    make_cub(tmp_path, n_classes=3, per_class=2)
    images = get_dataset("cub").load(tmp_path, strict_counts=False)
    with pytest.raises(DataError, match="incomplete"):
        make_split(images, range(1, 101), range(101, 201))


# --- transforms ------------------------------------------------------------------------------------


def test_random_resized_crop_flip_shape_dtype_and_determinism() -> None:
    x = torch.rand(4, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    out = random_resized_crop_flip(x, 16, torch.Generator().manual_seed(1))
    assert out.shape == (4, 3, 16, 16) and out.dtype == torch.float32
    again = random_resized_crop_flip(x, 16, torch.Generator().manual_seed(1))
    other = random_resized_crop_flip(x, 16, torch.Generator().manual_seed(2))
    assert torch.equal(out, again)
    assert not torch.allclose(out, other)
    # Bilinear sampling inside the image (reflection padding) never leaves the input's range.
    assert out.min() >= x.min() - 1e-6 and out.max() <= x.max() + 1e-6


def test_full_crop_is_identity_or_horizontal_flip() -> None:
    """scale=(1, 1), ratio=(1, 1) on a square image: each output is the input or its mirror image."""
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = random_resized_crop_flip(x, 8, torch.Generator().manual_seed(3), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    flipped = []
    for i in range(16):
        same = torch.allclose(out[i], x[i], atol=1e-5)
        mirror = torch.allclose(out[i], x[i].flip(-1), atol=1e-5)
        assert same != mirror
        flipped.append(mirror)
    assert 0 < sum(flipped) < 16


def test_small_scale_crops_zoom_in() -> None:
    """A crop of a quarter of the area, resized to full size, shows a two-colour image as mostly one."""
    x = torch.zeros(32, 1, 16, 16)
    x[..., 8:] = 1.0  # left half 0, right half 1
    out = random_resized_crop_flip(x, 16, torch.Generator().manual_seed(0), scale=(0.04, 0.04))
    # a 0.2 x 0.2 window rarely straddles the edge, so most outputs are (nearly) constant
    spread = (out.amax(dim=(1, 2, 3)) - out.amin(dim=(1, 2, 3))) < 0.05
    assert spread.float().mean() > 0.5


def test_center_crop_values() -> None:
    x = torch.arange(2 * 5 * 6, dtype=torch.float32).view(1, 2, 5, 6)
    out = center_crop(x, 3)
    assert out.shape == (1, 2, 3, 3)
    expected = [[[c * 30 + r * 6 + col for col in range(1, 4)] for r in range(1, 4)] for c in range(2)]
    assert out[0].tolist() == expected


def test_center_crop_larger_than_image_is_not_silent() -> None:
    x = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8)
    try:
        out = center_crop(x, 12)
    except (ValueError, ConfigError, DataError):
        return
    assert out.shape[-2:] == (12, 12)


def test_normalize_values_and_layout() -> None:
    x = torch.zeros(2, 3, 4, 3, dtype=torch.uint8)  # N H W C
    x[1, 2, 3] = torch.tensor([255, 51, 0], dtype=torch.uint8)
    mean, std = (0.5, 0.2, 0.1), (0.5, 0.25, 0.2)
    out = normalize(x, mean, std)
    assert out.shape == (2, 3, 3, 4) and out.dtype == torch.float32
    for c, v in enumerate((255, 51, 0)):
        assert out[1, c, 2, 3].item() == pytest.approx((v / 255 - mean[c]) / std[c])
        assert out[0, c, 0, 0].item() == pytest.approx((0 - mean[c]) / std[c])
