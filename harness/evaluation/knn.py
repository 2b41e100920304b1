"""Exact k-nearest-neighbour search in plain torch, so evaluation needs no faiss and runs on any device.

The distance is the registered one a study trains with (``harness/losses/distances.py``): its
normalisation, its maths and which way is nearer (``is_inverted``: a similarity is nearer when larger)
come from that one object, so a study is evaluated under exactly the distance it was trained for.
"""

from __future__ import annotations

import torch
from torch import Tensor

from harness.errors import ConfigError, DataError
from harness.losses.distances import get_distance


def _as_float_matrix(x: Tensor, name: str) -> Tensor:
    """Check shape and promote integer and half input to float32, so the distance maths is well
    defined and runs in matrix products (PML's half-precision path is elementwise over all pairs)."""
    if not isinstance(x, Tensor):
        raise DataError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise DataError(f"{name} must be 2-D [N, D], got shape {tuple(x.shape)}")
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


@torch.no_grad()
def knn(
    query: Tensor,
    k: int,
    distance: str = "cosine",
    reference: Tensor | None = None,
    chunk: int = 4096,
) -> tuple[Tensor, Tensor]:
    """Exact k nearest neighbours of each query row, nearest first: (score [Nq, k], idx [Nq, k]).

    ``distance`` is a registered distance name; ``score`` is its value (a distance, or for ``cosine``
    the cosine similarity, larger is nearer). With ``reference=None`` the query set is its own
    reference and each point's own row is masked out by index (not by distance 0, so duplicates still
    count as neighbours). Work is done in query chunks of ``chunk`` rows, so peak memory is about
    ``chunk * N_ref`` scores, on the tensors' device.
    """
    measure = get_distance(distance)  # an unknown name: the one-line error listing the known ones
    _check_positive("k", k)
    _check_positive("chunk", chunk)

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

    # Normalise once, then score chunk by chunk, as the distance's own forward does for one block.
    query = measure.maybe_normalize(query)
    ref = query if exclude_self else measure.maybe_normalize(ref)
    nearest_first = bool(measure.is_inverted)  # a similarity: the largest values are the nearest
    masked = float("-inf") if nearest_first else float("inf")

    n_query = query.shape[0]
    out_score = torch.empty((n_query, k), dtype=query.dtype, device=query.device)
    out_idx = torch.empty((n_query, k), dtype=torch.long, device=query.device)
    for start in range(0, n_query, chunk):
        stop = min(start + chunk, n_query)
        scores = measure.compute_mat(query[start:stop], ref)
        if measure.power != 1:
            scores = scores**measure.power
        if exclude_self:
            rows = torch.arange(stop - start, device=query.device)
            scores[rows, rows + start] = masked
        s, i = torch.topk(scores, k, dim=1, largest=nearest_first, sorted=True)
        out_score[start:stop] = s
        out_idx[start:stop] = i
    return out_score, out_idx
