"""Standard deep-metric-learning retrieval metrics (Recall@K, MAP@R, R-precision, NMI) from one kNN pass."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from harness.errors import ConfigError, DataError
from harness.evaluation.knn import knn
from harness.registry import DISTANCES

# KMeans restarts for NMI: a few, so NMI is not hostage to one bad start, yet cheap on CUB-sized sets.
KMEANS_N_INIT = 3


def _labels_tensor(labels: Tensor | np.ndarray, n: int, device: torch.device) -> Tensor:
    """Labels as a 1-D long tensor of class indices 0..C-1 on the embeddings' device."""
    lab = torch.as_tensor(np.asarray(labels)) if not isinstance(labels, Tensor) else labels
    if lab.dim() != 1:
        raise DataError(f"labels must be 1-D, got shape {tuple(lab.shape)}")
    if lab.shape[0] != n:
        raise DataError(f"{n} embeddings but {lab.shape[0]} labels")
    _, inverse = torch.unique(lab.to(device), return_inverse=True)
    return inverse


def _check_ks(ks: Sequence[int]) -> list[int]:
    """Validate the Recall@K cut-offs early, so a typo fails before the kNN pass."""
    out = list(ks)
    for k in out:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"recall cut-offs must be positive integers, got {k!r}")
    return out


def _nmi(embeddings: Tensor, labels: Tensor, distance: str, seed: int) -> float:
    """KMeans with one cluster per class, scored by NMI; cosine embeddings are clustered on the sphere."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    x = embeddings.detach().float()
    if distance == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    x_np = x.cpu().numpy().astype(np.float64)
    y = labels.cpu().numpy()
    n_clusters = int(y.max()) + 1
    pred = KMeans(n_clusters=n_clusters, n_init=KMEANS_N_INIT, random_state=seed).fit_predict(x_np)
    return float(normalized_mutual_info_score(y, pred))


@torch.no_grad()
def per_query_scores(
    embeddings: Tensor,
    labels: Tensor | np.ndarray,
    distance: str = "cosine",
    ks: Sequence[int] = (1, 2, 4, 8),
    chunk: int = 4096,
) -> dict[str, np.ndarray]:
    """Each query's ``recall@K`` hit (0/1), AP@R (``map@r``) and ``r_precision``: the numbers
    ``retrieval_metrics`` averages, kept per query for bootstrap intervals and paired tests.

    Queries whose class has no other member are left out, as in ``retrieval_metrics``.
    """
    return {k: v.cpu().numpy() for k, v in _per_query(embeddings, labels, distance, ks, chunk).items()}


def _per_query(
    embeddings: Tensor, labels: Tensor | np.ndarray, distance: str, ks: Sequence[int], chunk: int
) -> dict[str, Tensor]:
    DISTANCES.check(distance)
    cutoffs = _check_ks(ks)
    if not isinstance(embeddings, Tensor) or embeddings.dim() != 2:
        raise DataError("embeddings must be a 2-D torch.Tensor [N, D]")
    n = embeddings.shape[0]
    device = embeddings.device
    y = _labels_tensor(labels, n, device)

    counts = torch.bincount(y)
    r = counts[y] - 1  # other same-class items per query
    valid = r > 0
    if not bool(valid.any()):
        raise DataError("no class has two or more embeddings, so retrieval metrics are undefined")

    k = min(max([*cutoffs, int(r.max())]), n - 1)
    _, idx = knn(embeddings, k, distance=distance, chunk=chunk)
    match = y[idx] == y.unsqueeze(1)  # [N, k]

    match, r = match[valid], r[valid]
    out: dict[str, Tensor] = {}
    for cutoff in cutoffs:
        out[f"recall@{cutoff}"] = match[:, : min(cutoff, k)].any(dim=1).double()

    ranks = torch.arange(1, k + 1, device=device)
    rel = match & (ranks.unsqueeze(0) <= r.unsqueeze(1))  # relevant hits within the first R ranks
    rel_f = rel.double()
    precision_at_i = rel_f.cumsum(dim=1) / ranks.double()
    r_f = r.double()
    out["map@r"] = (precision_at_i * rel_f).sum(dim=1) / r_f
    out["r_precision"] = rel_f.sum(dim=1) / r_f
    return out


@torch.no_grad()
def retrieval_metrics(
    embeddings: Tensor,
    labels: Tensor | np.ndarray,
    distance: str = "cosine",
    ks: Sequence[int] = (1, 2, 4, 8),
    nmi: bool = True,
    seed: int = 0,
    chunk: int = 4096,
    per_query: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Leave-one-out retrieval metrics over one embedding set, as reported in DML papers.

    Keys: ``recall@K`` for each K in ``ks`` (share of queries with a same-class item in the top K),
    ``map@r`` and ``r_precision`` (Musgrave et al., "A Metric Learning Reality Check", R = number of
    other same-class items), and ``nmi`` when ``nmi`` is true. Queries whose class has no other member
    are left out of the retrieval metrics, as pytorch-metric-learning does; NMI uses every point.
    ``chunk`` bounds kNN memory (query rows per distance block) and never changes the result.
    Pass a dict as ``per_query`` to receive the per-query scores too (see ``per_query_scores``).
    """
    scores = _per_query(embeddings, labels, distance, ks, chunk)
    out = {k: v.mean().item() for k, v in scores.items()}
    if per_query is not None:
        per_query.update({k: v.cpu().numpy() for k, v in scores.items()})
    if nmi:
        y = _labels_tensor(labels, embeddings.shape[0], embeddings.device)
        out["nmi"] = _nmi(embeddings, y, distance, seed)
    return out
