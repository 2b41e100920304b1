"""NMI on large sets: a seeded sample of whole classes above ``nmi_max_images``, unchanged below it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.errors import ConfigError
from harness.evaluation import retrieval_metrics
from harness.evaluation.metrics import KMEANS_N_INIT, _nmi_sample


def _clustered(n_classes: int = 60, seed: int = 40) -> tuple[torch.Tensor, np.ndarray]:
    """Classes of 2-12 images (SOP's range) around random centres."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(n_classes), rng.integers(2, 13, size=n_classes)))
    x = rng.normal(size=(n_classes, 8))[labels] * 3 + rng.normal(size=(len(labels), 8))
    return torch.from_numpy(x.astype(np.float32)), labels


def test_the_sample_is_whole_classes_within_the_limit_and_fixed_by_seed() -> None:
    _, labels = _clustered()
    limit = len(labels) // 3
    rows = _nmi_sample(labels, limit, seed=0)
    assert rows is not None and 0.9 * limit <= len(rows) <= limit  # fills the budget, never beyond
    kept = np.unique(labels[rows])
    assert np.array_equal(np.sort(rows), np.flatnonzero(np.isin(labels, kept)))  # every member of each
    assert np.array_equal(rows, _nmi_sample(labels, limit, seed=0))
    assert not np.array_equal(rows, _nmi_sample(labels, limit, seed=1))
    assert _nmi_sample(labels, len(labels), seed=0) is None


def test_above_the_limit_nmi_reports_its_sample() -> None:
    x, labels = _clustered()
    limit = len(labels) // 3
    a = retrieval_metrics(x, labels, "cosine", nmi_max_images=limit)
    assert 0 < a["nmi_images"] <= limit and a["nmi_images"] == len(_nmi_sample(labels, limit, 0))
    assert a == retrieval_metrics(x, labels, "cosine", nmi_max_images=limit)  # deterministic by seed
    whole = retrieval_metrics(x, labels, "cosine")
    assert {k: v for k, v in a.items() if k not in ("nmi", "nmi_images")} == {
        k: v for k, v in whole.items() if k != "nmi"
    }  # only NMI is sampled; retrieval uses every image


def test_below_the_limit_nmi_is_unchanged() -> None:
    """Every image, one KMeans cluster per class on the sphere, as before the limit existed."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    x, labels = _clustered(n_classes=20)
    got = retrieval_metrics(x, labels, "cosine", seed=3, nmi_max_images=len(labels))
    assert "nmi_images" not in got
    unit = torch.nn.functional.normalize(x, dim=1).numpy().astype(np.float64)
    pred = KMeans(n_clusters=20, n_init=KMEANS_N_INIT, random_state=3).fit_predict(unit)
    assert got["nmi"] == normalized_mutual_info_score(labels, pred)


def test_a_limit_below_two_classes_raises_one_line() -> None:
    x, labels = _clustered(n_classes=10)
    with pytest.raises(ConfigError, match="nmi_max_images=1 holds fewer than two whole classes"):
        retrieval_metrics(x, labels, nmi_max_images=1)
    with pytest.raises(ConfigError, match="nmi_max_images must be a positive integer"):
        retrieval_metrics(x, labels, nmi_max_images=0)
