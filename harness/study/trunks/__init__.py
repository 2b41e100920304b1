"""Trunk modes (frozen, partial, finetune): each registers itself in its own module of this package."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.registry import TRUNKS
from harness.study.trunks.base import Prepared, TrunkMode, TrunkPool

if TYPE_CHECKING:
    from harness.study.config import StudyConfig


def get_trunk(cfg: StudyConfig) -> TrunkMode:
    mode: TrunkMode = TRUNKS.get(cfg.trunk)(cfg)
    return mode


__all__ = ["TRUNKS", "Prepared", "TrunkMode", "TrunkPool", "get_trunk"]
