"""Exact k-nearest-neighbour search in plain torch, so evaluation needs no faiss and runs on any device."""

from __future__ import annotations

import torch
from torch import Tensor

from harness.errors import ConfigError, DataError, unknown_name

DISTANCES: tuple[str, ...] = ("cosine", "euclidean", "squared_euclidean")


def _as_float_matrix(x: Tensor, name: str) -> Tensor:
    """Check shape and promote integer input, so the distance maths is well defined."""
    if not isinstance(x, Tensor):
        raise DataError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise DataError(f"{name} must be 2-D [N, D], got shape {tuple(x.shape)}")
    return x if x.is_floating_point() else x.float()


def _chunk_distances(q: Tensor, ref: Tensor, ref_sq: Tensor | None, distance: str) -> Tensor:
    """Distances from a query chunk to every reference row; for euclidean this is the squared value."""
    if distance == "cosine":
        # q and ref are already unit-normalised by the caller.
        return 1.0 - q @ ref.T
    assert ref_sq is not None
    q_sq = (q * q).sum(dim=1, keepdim=True)
    # Expansion ||q||^2 + ||r||^2 - 2 q.r; clamp the tiny negatives that rounding produces.
    return (q_sq + ref_sq.unsqueeze(0) - 2.0 * (q @ ref.T)).clamp_min_(0.0)


@torch.no_grad()
def knn(
    query: Tensor,
    k: int,
    distance: str = "cosine",
    reference: Tensor | None = None,
    chunk: int = 4096,
) -> tuple[Tensor, Tensor]:
    """Exact k nearest neighbours of each query row, nearest first: (dist [Nq, k], idx [Nq, k]).

    With ``reference=None`` the query set is its own reference and each point's own row is masked
    out by index (not by distance 0, so duplicates still count as neighbours). Work is done in query
    chunks of ``chunk`` rows, so peak memory is about ``chunk * N_ref`` distances, on the tensors' device.
    Cosine distance is ``1 - cos_sim``; euclidean distances do not assume normalised inputs.
    """
    if distance not in DISTANCES:
        raise unknown_name("distance", distance, DISTANCES)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ConfigError(f"chunk must be a positive integer, got {chunk!r}")

    query = _as_float_matrix(query, "query")
    exclude_self = reference is None
    ref = query if reference is None else _as_float_matrix(reference, "reference")
    if ref.shape[1] != query.shape[1]:
        raise DataError(f"query has dimension {query.shape[1]} but reference has {ref.shape[1]}")
    if ref.device != query.device:
        raise DataError(f"query is on {query.device} but reference is on {ref.device}")
    if ref.dtype != query.dtype:
        ref = ref.to(torch.promote_types(ref.dtype, query.dtype))
        query = query.to(ref.dtype)

    available = ref.shape[0] - (1 if exclude_self else 0)
    if k > available:
        what = "other points" if exclude_self else "reference points"
        raise ConfigError(f"k={k} but only {available} {what} are available")

    ref_sq: Tensor | None = None
    if distance == "cosine":
        query = torch.nn.functional.normalize(query, dim=1)
        ref = query if exclude_self else torch.nn.functional.normalize(ref, dim=1)
    else:
        ref_sq = (ref * ref).sum(dim=1)

    n_query = query.shape[0]
    out_dist = torch.empty((n_query, k), dtype=query.dtype, device=query.device)
    out_idx = torch.empty((n_query, k), dtype=torch.long, device=query.device)
    for start in range(0, n_query, chunk):
        stop = min(start + chunk, n_query)
        dist = _chunk_distances(query[start:stop], ref, ref_sq, distance)
        if exclude_self:
            rows = torch.arange(stop - start, device=query.device)
            dist[rows, rows + start] = float("inf")
        d, i = torch.topk(dist, k, dim=1, largest=False, sorted=True)
        out_dist[start:stop] = d
        out_idx[start:stop] = i

    if distance == "euclidean":
        out_dist.sqrt_()
    return out_dist, out_idx
