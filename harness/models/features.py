"""Frozen-trunk feature cache: one forward pass per (dataset, backbone, weights, image size).

With ``trunk: frozen`` every trial trains only the head on these features, so a CPU study runs
many trials for the price of one pass over the images.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from harness.data.cache import open_cache, part_path, sweep_parts
from harness.data.transforms import center_crop, normalize
from harness.models.embedder import TrunkInfo
from harness.progress import Progress

log = logging.getLogger(__name__)


def feature_cache_path(
    cache_dir: Path, dataset: str, fingerprint: str, info: TrunkInfo, size: int, cache_px: int
) -> Path:
    """Keyed by all the features depend on: the crop size AND the cached image it is cut from."""
    name = f"{dataset}-{info.name}-{info.weights}-{size}of{cache_px}px-{fingerprint}.npy"
    return Path(cache_dir) / "features" / name


@torch.inference_mode()
def embed_images(
    model: nn.Module,
    images_u8: np.ndarray,
    info: TrunkInfo,
    size: int,
    device: torch.device,
    batch_size: int = 128,
    report: bool = False,
) -> tuple[torch.Tensor, float]:
    """Eval-mode forward of centre-cropped images; returns (outputs on CPU, images/s)."""
    model.eval()
    outs = []
    t0 = time.perf_counter()
    progress = Progress(f"{info.name} features at {size}px", len(images_u8), "images") if report else None
    for start in range(0, len(images_u8), batch_size):
        x = torch.from_numpy(np.array(images_u8[start : start + batch_size])).to(device)  # a writable copy
        x = center_crop(normalize(x, info.mean, info.std), size)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outs.append(model(x).float().cpu())
        if progress is not None:
            progress.update(len(x))
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return torch.cat(outs), len(images_u8) / max(dt, 1e-9)


def trunk_features(
    trunk: nn.Module,
    info: TrunkInfo,
    images_u8: np.ndarray,
    size: int,
    path: Path,
    device: torch.device,
) -> np.ndarray:
    """Cached trunk features (N x num_features float32), computed once and memory-mapped after."""
    for _ in range(2):
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            feats, ips = embed_images(trunk.to(device), images_u8, info, size, device, report=True)
            log.info("trunk features for %d images at %.1f img/s -> %s", len(feats), ips, path)
            sweep_parts(path.parent)
            part = part_path(path, ".part.npy")
            np.save(part, feats.numpy().astype(np.float32))
            os.replace(part, path)
        arr = open_cache(path, (len(images_u8), info.num_features))
        if arr is not None:
            return arr
    raise RuntimeError(f"feature cache {path} could not be rebuilt")
