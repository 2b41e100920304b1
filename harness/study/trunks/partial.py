"""``trunk: partial``: the backbone's last ``train_blocks`` stages train, from cached activations of
the frozen bottom (``harness.models.partial``, ``harness.models.activations``).

Every cut the search space reaches is cached in one pass of the bottom: the centre view of every
image, and ``partial.views`` augmented views of every training-class image; each epoch draws one
cached view per image. The cache key holds the cut, the views, their seed, the sizes, the weights,
the files, the device type and the bottom's precision.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.data.base import ImageList
from harness.data.splits import training_images
from harness.errors import DataError
from harness.models import TrunkInfo
from harness.models.activations import (
    Activations,
    bottom_precision,
    build_activations,
    cache_stem,
    load_activations,
)
from harness.models.embedder import Embedder
from harness.models.partial import Bottom, Stacked, Top, check_cuts
from harness.params import TrialParams
from harness.registry import TRUNKS
from harness.study.trunks.base import Prepared, TrunkMode, TrunkPool
from harness.training import ActivationSource, Source

log = logging.getLogger(__name__)


@TRUNKS.register("partial")
class PartialTrunk(TrunkMode):
    seeded = True  # the top continues the cached bottom: one network, also when it is a random init

    @property
    def cuts(self) -> list[int]:
        """Every train_blocks value the search space reaches."""
        return self.cfg.search_space.integers("train_blocks")

    def check(self, trunk: nn.Module) -> None:
        check_cuts(trunk, self.cuts, self.cfg.backbone)

    def reference_defaults(self, values: dict[str, Any]) -> dict[str, Any]:
        """The default cut (1) where the space reaches it, else the searched cut nearest to it: only
        the searched cuts are cached."""
        if "train_blocks" in self.cfg.search_space.fixed:
            return values
        nearest = min(self.cuts, key=lambda c: (abs(c - values["train_blocks"]), c))
        return values | {"train_blocks": nearest}

    def cut(self, params: TrialParams | None) -> int | None:
        return min(self.cuts) if params is None else params.train_blocks

    def prepare(
        self,
        images: ImageList,
        key: str,
        images_u8: np.ndarray,
        trunk: nn.Module,
        info: TrunkInfo,
        device: torch.device,
    ) -> dict[int, Activations]:
        """Every cut, cached (the missing ones computed in one pass)."""
        cfg = self.cfg
        views, seed = cfg.partial.views, cfg.partial.seed
        aug_idx = training_images(cfg, images)
        precision = bottom_precision(device)
        stems = {
            k: cache_stem(
                cfg.cache_dir,
                cfg.dataset,
                key,
                info,
                cfg.image_size,
                cfg.cache_px,
                k,
                views,
                seed,
                aug_idx,
                precision,
                device.type,
            )
            for k in self.cuts
        }
        loaded = {k: load_activations(stems[k], k, len(images), views, aug_idx) for k in self.cuts}
        missing = {k: stems[k] for k, a in loaded.items() if a is None}
        if missing:
            log.info(
                "partial activations for cut(s) %s: %d centre views, and %d views of each of the %d"
                " training-class images",
                sorted(missing),
                len(images),
                views,
                len(aug_idx),
            )
            build_activations(
                Bottom(trunk),
                info,
                images_u8,
                cfg.image_size,
                missing,
                views,
                seed,
                aug_idx,
                device,
                precision=precision,
            )
            loaded |= {k: load_activations(stems[k], k, len(images), views, aug_idx) for k in missing}
        out = {k: a for k, a in loaded.items() if a is not None}
        if len(out) != len(self.cuts):  # pragma: no cover - a cache that cannot be rebuilt
            raise DataError(f"the activation cache under {cfg.cache_dir / 'activations'} could not be built")
        return out

    def source(
        self, prep: Prepared, idx: np.ndarray, device: torch.device, seed: int, cut: int | None, train: bool
    ) -> Source:
        acts = prep.inputs[cut if cut is not None else min(prep.inputs)]
        views = acts.views if train else None  # validation and test only ever use the centre view
        return ActivationSource(acts.centre, views, acts.view_rows, prep.images.labels, idx, device, seed)

    def model(self, prep: Prepared, params: TrialParams, device: torch.device, pool: TrunkPool) -> nn.Module:
        """The trainable top, copied from the worker's (pretrained) trunk; channels_last is 1.7x faster
        on CPU too (measured) for a convolutional top; a transformer's cached tokens are 3-d."""
        top = Top(pool.get(), params.train_blocks).to(device)
        layout = torch.contiguous_format if top.tokens else torch.channels_last
        return Embedder(top.to(memory_format=layout), self.head(prep, params, device), layout=layout)

    def image_model(
        self, prep: Prepared, trained: nn.Module, params: TrialParams, device: torch.device, pool: TrunkPool
    ) -> nn.Module:
        """The frozen bottom up to the cut the activations were cached at, then the trained top."""
        return Stacked(Bottom(pool.get()), params.train_blocks, trained)

    def baseline(self, prep: Prepared, idx: np.ndarray, device: torch.device) -> torch.Tensor:
        """The pretrained top on the cached centre views: the same features as the whole trunk."""
        cut = min(prep.inputs)
        top = Top(self.pool(device).get(), cut).to(device).eval()
        centre = prep.inputs[cut].centre
        with torch.inference_mode():
            parts = [
                top(torch.from_numpy(np.asarray(centre[idx[i : i + 256]], dtype=np.float32)).to(device)).cpu()
                for i in range(0, len(idx), 256)
            ]
        return torch.cat(parts)
