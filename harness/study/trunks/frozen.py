"""``trunk: frozen``: the backbone's features are cached once; every trial trains only the head."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from harness.data.base import ImageList
from harness.models import TrunkInfo, feature_cache_path, trunk_features
from harness.models.embedder import Embedder
from harness.params import TrialParams
from harness.registry import TRUNKS
from harness.study.trunks.base import Prepared, TrunkMode, TrunkPool
from harness.training import FeatureSource, Source


@TRUNKS.register("frozen")
class FrozenTrunk(TrunkMode):
    def prepare(
        self,
        images: ImageList,
        key: str,
        images_u8: np.ndarray,
        trunk: nn.Module,
        info: TrunkInfo,
        device: torch.device,
    ) -> np.ndarray:
        cfg = self.cfg
        path = feature_cache_path(cfg.cache_dir, cfg.dataset, key, info, cfg.image_size, cfg.cache_px)
        return trunk_features(trunk, info, images_u8, cfg.image_size, path, device)

    def source(
        self, prep: Prepared, idx: np.ndarray, device: torch.device, seed: int, cut: int | None, train: bool
    ) -> Source:
        return FeatureSource(prep.inputs, prep.images.labels, idx, device)

    def model(self, prep: Prepared, params: TrialParams, device: torch.device, pool: TrunkPool) -> nn.Module:
        return self.head(prep, params, device)

    def image_model(
        self, prep: Prepared, trained: nn.Module, params: TrialParams, device: torch.device, pool: TrunkPool
    ) -> nn.Module:
        """The frozen trunk the features came from, then the trained head."""
        return Embedder(pool.get(), trained)  # type: ignore[arg-type]

    def baseline(self, prep: Prepared, idx: np.ndarray, device: torch.device) -> torch.Tensor:
        return torch.from_numpy(prep.inputs[idx].copy())
