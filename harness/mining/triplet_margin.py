"""all / semihard / hard in-batch mining fused with the loss, without enumerating B^3 triplets.

For an anchor-positive pair (a, p) the active triplets are the negatives whose farness f_an lies in
an interval set by f_ap and the margin m (PML's TripletMarginMiner conditions on t = f_an - f_ap):
  all       t <= m     active (loss > 0): f_an < f_ap + m
  hard      t <= 0     active:            f_an <= f_ap
  semihard  0 < t <= m active:            f_ap < f_an < f_ap + m
Sorting each anchor's negatives once turns every interval into two ``searchsorted`` look-ups, and
prefix sums of the sorted negatives give the sum of f_an over the interval, so

  sum over active triplets of (f_ap - f_an + m) = sum_ap [count * (f_ap + m) - (C[hi] - C[lo])]

is exact (value and gradient) in O(B^2 log B) time and O(B^2) memory. Prefix sums are float64:
in float32 their differences would lose ~1e-3 at B = 2048.
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_metric_learning.distances import BaseDistance

from harness.mining.base import LossOut, Miner, Triplets, masks
from harness.registry import MINERS

KINDS = ("all", "semihard", "hard")


@MINERS.register("all", kind="all")
@MINERS.register("semihard", kind="semihard")
@MINERS.register("hard", kind="hard")
class TripletMarginMiner(Miner):
    def __init__(
        self, distance: BaseDistance, margin: float, generator: torch.Generator | None = None, *, kind: str
    ) -> None:
        super().__init__(distance, margin, generator)
        if kind not in KINDS:  # pragma: no cover - the registry names only these
            raise ValueError(kind)
        self.kind = kind

    def reference(self) -> Any:
        from pytorch_metric_learning import miners

        return miners.TripletMarginMiner(
            margin=self.margin, type_of_triplets=self.kind, distance=self.distance
        )

    def _bounds(self, s: torch.Tensor, f_ap: torch.Tensor, active: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Index range [lo, hi) of each (a, p)'s negatives in the sorted rows ``s``."""
        upper = f_ap + self.margin
        if self.kind == "hard":  # f_an <= f_ap, and active only below f_ap + m (matters for m <= 0)
            hi = torch.minimum(
                torch.searchsorted(s, f_ap.detach(), right=True),
                torch.searchsorted(s, upper.detach(), right=not active),
            )
            return torch.zeros_like(hi), hi
        hi = torch.searchsorted(s, upper.detach(), right=not active)
        lo = (
            torch.searchsorted(s, f_ap.detach(), right=True)
            if self.kind == "semihard"
            else torch.zeros_like(hi)
        )
        return lo, torch.maximum(hi, lo)

    def fused_loss(
        self, embeddings: torch.Tensor, f: torch.Tensor, labels: torch.Tensor, u: torch.Tensor | None
    ) -> LossOut:
        pos, neg = masks(labels)
        inf = f.new_full((), float("inf"))  # no host-to-device copy: no sync
        s, order = torch.sort(torch.where(neg, f.detach(), inf), dim=1)
        sorted_f = torch.where(torch.isfinite(s), f.gather(1, order), 0.0)  # keeps the gradient path
        prefix = torch.nn.functional.pad(sorted_f.double().cumsum(1), (1, 0))
        lo, hi = self._bounds(s, f, active=True)
        count = (hi - lo) * pos
        sum_an = (prefix.gather(1, hi) - prefix.gather(1, lo)) * pos
        total = (count * (f.double() + self.margin)).sum() - sum_an.sum()
        active = count.sum()
        mined_lo, mined_hi = self._bounds(s, f, active=False)
        mined = ((mined_hi - mined_lo) * pos).sum()
        return (total / active.clamp(min=1)).float(), active, mined

    def mine(self, embeddings: torch.Tensor, f: torch.Tensor, labels: torch.Tensor) -> Triplets:
        """Explicit triplets with PML's exact comparisons, chunked over anchors (tests, small B)."""
        pos, neg = masks(labels)
        out: list[torch.Tensor] = []
        for start in range(0, len(f), 64):
            rows = slice(start, start + 64)
            t = f[rows].unsqueeze(1) - f[rows].unsqueeze(2)  # t[a, p, n] = f_an - f_ap
            ok = pos[rows].unsqueeze(2) & neg[rows].unsqueeze(1) & (t <= self.margin)
            if self.kind == "hard":
                ok &= t <= 0
            elif self.kind == "semihard":
                ok &= t > 0
            idx = torch.nonzero(ok)
            idx[:, 0] += start
            out.append(idx)
        a, p, n = torch.cat(out).unbind(1)
        return a, p, n
