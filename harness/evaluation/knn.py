"""Exact k-nearest-neighbour search in plain torch (any device, no extra package), or in faiss's exact
flat indexes where faiss is installed (``backend``).

The distance is the registered one a study trains with (``harness/losses/distances.py``): its
normalisation, its maths and which way is nearer (``is_inverted``: a similarity is nearer when larger)
come from that one object, so a study is evaluated under exactly the distance it was trained for.

Memory is bounded for references of any size: queries go in blocks whose row count comes from a
byte budget (``max_bytes``: the block's scores against every reference row plus its top-k lists), so
no N x N matrix is ever held. ``iter_knn`` yields the blocks, so a caller can reduce each one (the
retrieval metrics do) and never hold an N x k result either.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from pytorch_metric_learning.distances import BaseDistance, DotProductSimilarity, LpDistance
from torch import Tensor

from harness.errors import ConfigError, DataError
from harness.losses.distances import get_distance

BACKENDS = ("torch", "faiss", "auto")
# 256 MiB of scores per query block: ~1,100 rows against SOP's 60,502 test images in float32, the
# whole of CUB's or Cars196's test set (5,924 / 8,131) in one or two blocks, as the old fixed chunk.
DEFAULT_MAX_BYTES = 256 * 2**20
# Bytes per top-k entry that a block holds besides its scores, rounded up: the score and index lists
# (8 + 8), and the metrics' temporaries over them (the neighbours' labels 8, bool masks, three float64).
TOPK_BYTES_PER_ENTRY = 64


def as_float_matrix(x: Tensor, name: str) -> Tensor:
    """Check shape and promote integer and half input to float32, so the distance maths is well
    defined and runs in matrix products (PML's half-precision path is elementwise over all pairs)."""
    if not isinstance(x, Tensor):
        raise DataError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise DataError(f"{name} must be 2-D [N, D], got shape {tuple(x.shape)}")
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise ConfigError("backend 'faiss' needs the faiss package: pip install faiss-cpu") from None
    return faiss


def faiss_available() -> bool:
    try:
        _faiss()
    except ConfigError:
        return False
    return True


def _faiss_kind(measure: BaseDistance) -> str | None:
    """The exact faiss index for a distance: inner product, or squared L2 (and its root), else None."""
    if isinstance(measure, DotProductSimilarity) and measure.power == 1:
        return "ip"  # cosine: the embeddings are normalised before they reach the index
    if isinstance(measure, LpDistance) and measure.p == 2 and measure.power in (1, 2):
        return "l2" if measure.power == 1 else "l2sq"
    return None


def resolve_backend(
    backend: str, measure: BaseDistance, distance: str, device: torch.device | None = None
) -> str:
    """``torch`` or ``faiss``. ``auto`` takes faiss where it is installed, does the distance exactly
    and the embeddings are on the CPU (faiss-cpu on GPU tensors would be a copy to a slower device)."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown kNN backend {backend!r}; known backends: {', '.join(BACKENDS)}")
    if backend == "torch":
        return "torch"
    exact = _faiss_kind(measure) is not None
    if backend == "auto":
        on_cpu = device is None or device.type == "cpu"
        return "faiss" if exact and on_cpu and faiss_available() else "torch"
    if not exact:
        raise ConfigError(f"faiss has no exact index for distance {distance!r}; use backend: torch")
    _faiss()
    return "faiss"


def chunk_rows(n_ref: int, k: int, itemsize: int, chunk: int, max_bytes: int, score_copies: int = 1) -> int:
    """Query rows per block: as many as keep ``score_copies`` score rows against all ``n_ref``
    references plus the top-k lists within ``max_bytes``; at most ``chunk``, at least one."""
    per_row = score_copies * n_ref * itemsize + k * TOPK_BYTES_PER_ENTRY
    return max(1, min(chunk, max_bytes // per_row))


def _check_exclude(exclude: Tensor, n_query: int, n_ref: int, device: torch.device) -> Tensor:
    if not isinstance(exclude, Tensor) or exclude.dim() != 1 or exclude.shape[0] != n_query:
        raise DataError(f"exclude must be a 1-D tensor with one reference row (or -1) per query ({n_query})")
    if exclude.dtype.is_floating_point or exclude.dtype == torch.bool:
        raise DataError(f"exclude must hold integer row indices, got {exclude.dtype}")
    exclude = exclude.to(device=device, dtype=torch.long)
    if n_query and (int(exclude.min()) < -1 or int(exclude.max()) >= n_ref):
        raise DataError(f"exclude holds a row outside -1..{n_ref - 1}")
    return exclude


@torch.no_grad()
def knn(
    query: Tensor,
    k: int,
    distance: str = "cosine",
    reference: Tensor | None = None,
    chunk: int = 4096,
    *,
    exclude: Tensor | None = None,
    backend: str = "torch",
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[Tensor, Tensor]:
    """Exact k nearest neighbours of each query row, nearest first: (score [Nq, k], idx [Nq, k]).

    ``distance`` is a registered distance name; ``score`` is its value (a distance, or for ``cosine``
    the cosine similarity, larger is nearer). With ``reference=None`` the query set is its own
    reference and each point's own row is masked out by index (not by distance 0, so duplicates still
    count as neighbours). With a reference, ``exclude`` (one reference row per query, -1 for none)
    masks a query's own copy in the reference the same way. Queries go in blocks of at most ``chunk``
    rows and ``max_bytes`` of scores (``chunk_rows``); neither changes the result. ``backend``:
    ``torch``, ``faiss`` (exact flat index, CPU) or ``auto`` (faiss when installed).
    """
    measure = get_distance(distance)  # an unknown name: the one-line error listing the known ones
    check_positive("k", k)
    check_positive("chunk", chunk)
    check_positive("max_bytes", max_bytes)
    query = as_float_matrix(query, "query")
    engine = resolve_backend(backend, measure, distance, query.device)
    exclude_self = reference is None
    if exclude_self and exclude is not None:
        raise DataError("exclude needs a reference: with reference=None each row's own row is excluded")
    ref = query if reference is None else as_float_matrix(reference, "reference")
    if ref.shape[1] != query.shape[1]:
        raise DataError(f"query has dimension {query.shape[1]} but reference has {ref.shape[1]}")
    if ref.device != query.device:
        raise DataError(f"query is on {query.device} but reference is on {ref.device}")
    if ref.dtype != query.dtype:
        ref = ref.to(torch.promote_types(ref.dtype, query.dtype))
        query = query.to(ref.dtype)
    if exclude is not None:
        exclude = _check_exclude(exclude, query.shape[0], ref.shape[0], query.device)
    elif exclude_self:
        exclude = torch.arange(query.shape[0], device=query.device)

    masks_one = exclude is not None and bool((exclude >= 0).any())
    available = ref.shape[0] - (1 if masks_one else 0)
    if k > available:
        what = "other points" if exclude_self else "reference points"
        raise ConfigError(f"k={k} but only {available} {what} are available")

    # Normalise once, then score block by block, as the distance's own forward does for one block.
    query = measure.maybe_normalize(query)
    ref = query if exclude_self else measure.maybe_normalize(ref)
    n_query = query.shape[0]
    out_score = torch.empty((n_query, k), dtype=query.dtype, device=query.device)
    out_idx = torch.empty((n_query, k), dtype=torch.long, device=query.device)
    for start, stop, s, i in iter_knn(query, ref, k, measure, exclude, chunk, max_bytes, engine):
        out_score[start:stop] = s
        out_idx[start:stop] = i
    return out_score, out_idx


def iter_knn(
    query: Tensor,
    ref: Tensor,
    k: int,
    measure: BaseDistance,
    exclude: Tensor | None,
    chunk: int,
    max_bytes: int,
    backend: str,
    rows: Tensor | None = None,
) -> Iterator[tuple[int, int, Tensor, Tensor]]:
    """Blocks of the k nearest references, nearest first: (start, stop, score [c, k], idx [c, k]),
    ``start:stop`` counting the picked queries.

    ``query`` and ``ref`` are already normalised and checked; ``rows`` (indices into ``query``, all
    rows when None) picks the queries, and ``exclude`` holds one reference row per picked query (-1:
    none). An excluded row is never ahead of a real one: when k reaches it (k equal to the number of
    references) it comes last with the score of "farthest" (-inf for a similarity, +inf otherwise).
    """
    n_pick = query.shape[0] if rows is None else rows.shape[0]
    if backend == "faiss":
        step = chunk_rows(ref.shape[0], k + 1, 4, chunk, max_bytes, score_copies=0)
        search = _faiss_search(ref, k, measure)
    else:
        copies = 1 if measure.power == 1 else 2  # ``scores ** power`` is a second block
        step = chunk_rows(ref.shape[0], k, query.element_size(), chunk, max_bytes, score_copies=copies)
        search = _torch_search(ref, k, measure)
    for start in range(0, n_pick, step):
        stop = min(start + step, n_pick)
        picked: slice | Tensor = slice(start, stop) if rows is None else rows[start:stop]
        excl = None if exclude is None else exclude[start:stop]
        s, i = search(query[picked], excl)
        yield start, stop, s, i


def _farthest(measure: BaseDistance) -> float:
    return float("-inf") if measure.is_inverted else float("inf")


def _torch_search(ref: Tensor, k: int, measure: BaseDistance) -> Any:
    nearest_first = bool(measure.is_inverted)  # a similarity: the largest values are the nearest
    masked = _farthest(measure)

    def search(q: Tensor, excl: Tensor | None) -> tuple[Tensor, Tensor]:
        scores = measure.compute_mat(q, ref)
        if measure.power != 1:
            scores = scores**measure.power
        if excl is not None:
            hit = torch.nonzero(excl >= 0).squeeze(1)
            scores[hit, excl[hit]] = masked
        s, i = torch.topk(scores, k, dim=1, largest=nearest_first, sorted=True)
        return s, i

    return search


def _faiss_search(ref: Tensor, k: int, measure: BaseDistance) -> Any:
    """Exact search in a flat index over ``ref`` (on the CPU, float32); a query's excluded row is
    dropped from a k+1 search, so it costs one more neighbour, not a second pass."""
    faiss = _faiss()
    kind = _faiss_kind(measure)
    device, dtype = ref.device, ref.dtype
    ref_np = ref.detach().to("cpu", torch.float32).contiguous().numpy()
    index = faiss.IndexFlatIP(ref_np.shape[1]) if kind == "ip" else faiss.IndexFlatL2(ref_np.shape[1])
    index.add(ref_np)
    n_ref = ref_np.shape[0]
    masked = _farthest(measure)

    def search(q: Tensor, excl: Tensor | None) -> tuple[Tensor, Tensor]:
        q_np = q.detach().to("cpu", torch.float32).contiguous().numpy()
        extra = excl is not None and bool((excl >= 0).any())
        width = min(k + 1, n_ref) if extra else k
        d_np, i_np = index.search(q_np, width)
        s, i = torch.from_numpy(d_np), torch.from_numpy(i_np)
        if kind == "l2":
            s = s.clamp_min_(0).sqrt_()  # faiss's L2 index scores squared distances
        if extra:
            assert excl is not None
            e = excl.cpu().unsqueeze(1)
            hit = (i == e) & (e >= 0)
            if width > k:  # drop the excluded row, or the (k+1)-th where it is not among them
                hit[~hit.any(dim=1), width - 1] = True
                keep = ~hit
                s, i = s[keep].view(-1, k), i[keep].view(-1, k)
            else:  # k is every reference: the excluded row goes last, "farthest", as in torch
                order = torch.sort(hit.to(torch.int8), dim=1, stable=True).indices
                s, i = s.gather(1, order), i.gather(1, order)
                s[hit.any(dim=1), -1] = masked
        return s.to(device=device, dtype=dtype), i.to(device)

    return search
