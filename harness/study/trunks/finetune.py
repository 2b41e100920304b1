"""``trunk: finetune``: the whole backbone trains, on augmented crops of the decoded images (on the
device, in batch); nothing is cached beyond the images."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from harness.data.base import ImageList
from harness.models import TrunkInfo, create_trunk, embed_images
from harness.models.embedder import Embedder
from harness.params import TrialParams
from harness.registry import TRUNKS
from harness.study.trunks.base import Prepared, TrunkMode, TrunkPool
from harness.training import ImageSource, Source


@TRUNKS.register("finetune")
class FinetuneTrunk(TrunkMode):
    def prepare(
        self,
        images: ImageList,
        key: str,
        images_u8: np.ndarray,
        trunk: nn.Module,
        info: TrunkInfo,
        device: torch.device,
    ) -> None:
        return None

    def source(
        self, prep: Prepared, idx: np.ndarray, device: torch.device, seed: int, cut: int | None, train: bool
    ) -> Source:
        info = prep.trunk_info
        return ImageSource(
            prep.images_u8, prep.images.labels, idx, self.cfg.image_size, info.mean, info.std, device, seed
        )

    def model(self, prep: Prepared, params: TrialParams, device: torch.device, pool: TrunkPool) -> nn.Module:
        return Embedder(pool.get(), self.head(prep, params, device))

    def image_model(
        self, prep: Prepared, trained: nn.Module, params: TrialParams, device: torch.device, pool: TrunkPool
    ) -> nn.Module:
        """Trunk and head trained together: the model itself."""
        return trained

    def baseline(self, prep: Prepared, idx: np.ndarray, device: torch.device) -> torch.Tensor:
        cfg = self.cfg
        trunk, info = create_trunk(cfg.backbone, cfg.pretrained, cfg.checkpoint, seed=cfg.seed)
        feats, _ = embed_images(trunk.to(device), prep.images_u8[idx], info, cfg.image_size, device)
        return feats
