"""Standard deep-metric-learning retrieval metrics (Recall@K, MAP@R, R-precision, NMI) from one kNN pass.

Leave-one-out over one embedding set (each row against all others), or a query/gallery protocol
(boolean masks over the rows). The per-query numbers are reduced inside the kNN's query blocks, so
evaluation holds about ``chunk x N_gallery`` scores and O(N) results, never N x N nor N x k.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from harness.errors import ConfigError, DataError
from harness.evaluation.knn import (
    DEFAULT_MAX_BYTES,
    as_float_matrix,
    check_positive,
    iter_knn,
    resolve_backend,
)
from harness.losses.distances import get_distance

# KMeans restarts for NMI: a few, so NMI is not hostage to one bad start, yet cheap on CUB-sized sets.
KMEANS_N_INIT = 3
# NMI's KMeans has one cluster per class, so its cost grows with images x classes: on SOP-sized
# classes (5.3 images each, 512-d, 2 CPU threads, sklearn 1.9) 5,000 images took 6.5 s, 10,000 took
# 42 s (about the kNN pass over all of SOP's test set) and 20,000 took 156 s; all 60,502 would take
# over 20 min. Above this many images NMI is computed on a seeded sample of whole classes; CUB's and
# Cars196's test sets (5,924 and 8,131 images) stay whole.
NMI_MAX_IMAGES = 10_000


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


def _nmi_sample(labels: np.ndarray, max_images: int, seed: int) -> np.ndarray | None:
    """Rows of a seeded sample of whole classes totalling at most ``max_images`` (None: all fit).

    Classes are taken in a seeded random order, each one that still fits, so the sample is
    deterministic by seed and no class is cut (a cut class would change what NMI measures)."""
    if len(labels) <= max_images:
        return None
    counts = np.bincount(labels)
    budget, chosen = max_images, []
    for c in np.random.default_rng(seed).permutation(len(counts)):
        if 0 < counts[c] <= budget:
            chosen.append(c)
            budget -= int(counts[c])
    if len(chosen) < 2:
        raise ConfigError(f"nmi_max_images={max_images} holds fewer than two whole classes; raise it")
    return np.flatnonzero(np.isin(labels, chosen))


def _nmi(
    embeddings: Tensor, labels: Tensor, distance: str, seed: int, max_images: int = NMI_MAX_IMAGES
) -> tuple[float, int | None]:
    """KMeans with one cluster per class, scored by NMI; cosine embeddings are clustered on the sphere.
    Returns (nmi, images in the sample), the count None when every image was used."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    y = labels.cpu().numpy()
    rows = _nmi_sample(y, max_images, seed)
    x = embeddings.detach()
    if rows is not None:
        x, y = x[torch.as_tensor(rows, device=x.device)], np.unique(y[rows], return_inverse=True)[1]
    x = x.float()
    if distance == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    x_np = x.cpu().numpy().astype(np.float64)
    n_clusters = int(y.max()) + 1
    pred = KMeans(n_clusters=n_clusters, n_init=KMEANS_N_INIT, random_state=seed).fit_predict(x_np)
    return float(normalized_mutual_info_score(y, pred)), None if rows is None else len(rows)


def _row_mask(mask: Tensor | np.ndarray | None, n: int, name: str, device: torch.device) -> Tensor | None:
    if mask is None:
        return None
    m = torch.as_tensor(np.asarray(mask)) if not isinstance(mask, Tensor) else mask
    if m.dtype != torch.bool or m.dim() != 1 or m.shape[0] != n:
        got = f"{m.dtype} {tuple(m.shape)}"
        raise DataError(f"{name} must be a boolean mask over the {n} embeddings, got {got}")
    if not bool(m.any()):
        raise DataError(f"the {name} mask selects no embeddings")
    return m.to(device)


@torch.no_grad()
def per_query_scores(
    embeddings: Tensor,
    labels: Tensor | np.ndarray,
    distance: str = "cosine",
    ks: Sequence[int] = (1, 2, 4, 8),
    chunk: int = 4096,
    *,
    query: Tensor | np.ndarray | None = None,
    gallery: Tensor | np.ndarray | None = None,
    backend: str = "torch",
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> dict[str, np.ndarray]:
    """Each query's ``recall@K`` hit (0/1), AP@R (``map@r``) and ``r_precision``: the numbers
    ``retrieval_metrics`` averages, kept per query for bootstrap intervals and paired tests.

    Queries without a same-class item to find are left out, as in ``retrieval_metrics``; the rest
    keep their order (the rows of ``embeddings``, or of the ``query`` mask).
    """
    scores = _per_query(embeddings, labels, distance, ks, chunk, query, gallery, backend, max_bytes)
    return {k: v.cpu().numpy() for k, v in scores.items()}


def _per_query(
    embeddings: Tensor,
    labels: Tensor | np.ndarray,
    distance: str,
    ks: Sequence[int],
    chunk: int,
    query: Tensor | np.ndarray | None = None,
    gallery: Tensor | np.ndarray | None = None,
    backend: str = "torch",
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> dict[str, Tensor]:
    measure = get_distance(distance)  # an unknown name: the one-line error listing the known ones
    cutoffs = _check_ks(ks)
    check_positive("chunk", chunk)
    check_positive("max_bytes", max_bytes)
    if not isinstance(embeddings, Tensor) or embeddings.dim() != 2:
        raise DataError("embeddings must be a 2-D torch.Tensor [N, D]")
    engine = resolve_backend(backend, measure, distance, embeddings.device)
    n = embeddings.shape[0]
    device = embeddings.device
    y = _labels_tensor(labels, n, device)
    q_mask = _row_mask(query, n, "query", device)
    g_mask = _row_mask(gallery, n, "gallery", device)

    everyone = torch.arange(n, device=device)
    q_rows = everyone if q_mask is None else torch.nonzero(q_mask).squeeze(1)
    g_rows = everyone if g_mask is None else torch.nonzero(g_mask).squeeze(1)
    in_gallery = torch.full((n,), -1, dtype=torch.long, device=device)
    in_gallery[g_rows] = torch.arange(g_rows.shape[0], device=device)
    own = in_gallery[q_rows]  # each query's own row in the gallery (masked by index), -1 if absent
    y_q, y_g = y[q_rows], y[g_rows]
    r = torch.bincount(y_g, minlength=int(y.max()) + 1)[y_q] - (own >= 0).long()  # same-class others
    valid = r > 0
    if not bool(valid.any()):
        if q_mask is None and g_mask is None:
            raise DataError("no class has two or more embeddings, so retrieval metrics are undefined")
        raise DataError("no query has a same-class gallery item, so retrieval metrics are undefined")

    # k reaches every query's R; a query outside the gallery may need all of it, the others one less.
    k = min(max([*cutoffs, int(r.max())]), g_rows.shape[0] - int(bool((own >= 0).all())))
    x = measure.maybe_normalize(as_float_matrix(embeddings, "embeddings"))
    ref = x if g_mask is None else x[g_rows]
    picked = None if q_mask is None else q_rows
    ranks = torch.arange(1, k + 1, device=device)
    parts: dict[str, list[Tensor]] = {}
    for start, stop, _, idx in iter_knn(x, ref, k, measure, own, chunk, max_bytes, engine, picked):
        v = valid[start:stop]
        idx, yq, rr = idx[v], y_q[start:stop][v], r[start:stop][v]
        match = (y_g[idx] == yq.unsqueeze(1)) & (idx != own[start:stop][v].unsqueeze(1))  # [c, k]
        for name, value in _block_scores(match, rr, cutoffs, ranks).items():
            parts.setdefault(name, []).append(value)
    return {name: torch.cat(values) for name, values in parts.items()}


def _block_scores(match: Tensor, r: Tensor, cutoffs: list[int], ranks: Tensor) -> dict[str, Tensor]:
    """Recall@K hits, AP@R and R-precision of a block of queries from their top-k label matches."""
    k = match.shape[1]
    out: dict[str, Tensor] = {}
    for cutoff in cutoffs:
        out[f"recall@{cutoff}"] = match[:, : min(cutoff, k)].any(dim=1).double()
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
    *,
    query: Tensor | np.ndarray | None = None,
    gallery: Tensor | np.ndarray | None = None,
    backend: str = "torch",
    max_bytes: int = DEFAULT_MAX_BYTES,
    nmi_max_images: int = NMI_MAX_IMAGES,
) -> dict[str, float]:
    """Retrieval metrics over one embedding set, as reported in DML papers.

    Keys: ``recall@K`` for each K in ``ks`` (share of queries with a same-class item in the top K),
    ``map@r`` and ``r_precision`` (Musgrave et al., "A Metric Learning Reality Check", R = number of
    same-class items to find), and ``nmi`` when ``nmi`` is true.

    With ``query`` and ``gallery`` None, leave-one-out: every row is a query against all others.
    Given (boolean masks over the rows, either defaulting to all rows), the query rows are scored
    against the gallery rows; a query that is also in the gallery has its own row excluded (by index,
    so a duplicate still counts), and R counts the gallery's other items of its class. Queries with
    R = 0 are left out, as pytorch-metric-learning does. NMI clusters every row, or above
    ``nmi_max_images`` a seeded sample of whole classes, whose size is then ``nmi_images``.
    ``chunk`` and ``max_bytes`` bound memory (query rows per block, bytes of scores per block) and
    never change the result; ``backend`` is the kNN's (``knn``). Pass a dict as ``per_query`` to
    receive the per-query scores too (see ``per_query_scores``).
    """
    check_positive("nmi_max_images", nmi_max_images)
    scores = _per_query(embeddings, labels, distance, ks, chunk, query, gallery, backend, max_bytes)
    out: dict[str, float] = {k: v.mean().item() for k, v in scores.items()}
    if per_query is not None:
        per_query.update({k: v.cpu().numpy() for k, v in scores.items()})
    if nmi:
        y = _labels_tensor(labels, embeddings.shape[0], embeddings.device)
        out["nmi"], sampled = _nmi(embeddings, y, distance, seed, nmi_max_images)
        if sampled is not None:
            out["nmi_images"] = sampled
    return out
