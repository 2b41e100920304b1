"""Partial fine-tuning's cache: the frozen bottom's activations at each cut, computed once.

For every image the centre view (evaluation, and the whole-set pass of offline mining), and for
every image of the training classes ``views`` augmented views (random-resized-crop + flip, drawn
from ``seed``): each training epoch draws one cached view per image. Stored fp16, memory-mapped.

The key holds everything the numbers depend on: the image list and its bytes (the content key), the
backbone and its weights, the crop size and the cached image size, the cut, the number of views,
the augmentation seed and which images have views. A cache from another cut or view count is never
reused; a damaged one is set aside and rebuilt. All cuts a study needs come from one pass.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.data.cache import create_npy, open_cache, part_path, sweep_parts
from harness.data.transforms import center_crop, normalize, random_resized_crop_flip
from harness.models.embedder import TrunkInfo
from harness.models.partial import Bottom
from harness.progress import Progress

log = logging.getLogger(__name__)
VERSION = 1  # bump when the layout or the augmentation changes


@dataclass(frozen=True)
class Activations:
    """One cut's cache: ``centre`` [N, C, H, W]; ``views`` [M, V, C, H, W] for the images in
    ``view_rows`` (global index -> row, -1 for images without views)."""

    cut: int
    centre: np.ndarray
    views: np.ndarray
    view_rows: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.centre.shape[1:])


def bottom_precision(device: torch.device) -> str:
    """bf16 where the hardware runs it natively (CUDA; CPUs with AVX512-BF16 or AMX: 2.3x faster
    for Lite0's bottom on this project's 2-core machine), else fp32. Part of the cache key."""
    if device.type == "cuda":
        return "bf16"
    try:
        fast = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    except AttributeError:  # an older torch without the probes
        fast = False
    return "bf16" if fast else "fp32"


def cache_stem(
    cache_dir: Path,
    dataset: str,
    images_key: str,
    info: TrunkInfo,
    size: int,
    cache_px: int,
    cut: int,
    views: int,
    seed: int,
    aug_idx: np.ndarray,
    precision: str = "fp32",
    device_type: str = "cpu",
) -> Path:
    """The cache's name: everything its numbers depend on. ``device_type`` too: CPU and CUDA
    generators draw different crops from one seed, and kernels differ in their last bits."""
    aug = hashlib.sha256(np.ascontiguousarray(aug_idx, dtype=np.int64).tobytes()).hexdigest()[:8]
    name = (
        f"{dataset}-{info.name}-{info.weights}-{size}of{cache_px}px-cut{cut}-v{views}-s{seed}-a{aug}"
        f"-{precision}-{device_type}-{images_key}-r{VERSION}"
    )
    return Path(cache_dir) / "activations" / name


def _paths(stem: Path) -> tuple[Path, Path]:
    return stem.with_name(stem.name + "-centre.npy"), stem.with_name(stem.name + "-views.npy")


@torch.inference_mode()
def build_activations(
    bottom: Bottom,
    info: TrunkInfo,
    images_u8: np.ndarray,
    size: int,
    stems: dict[int, Path],
    views: int,
    seed: int,
    aug_idx: np.ndarray,
    device: torch.device,
    batch_size: int = 64,
    precision: str = "fp32",
) -> None:
    """One pass of the frozen bottom over the centre views and the augmented views, writing every
    cut in ``stems`` (``.part`` files, their disk space reserved first, renamed when complete)."""
    bottom = bottom.to(device).eval()
    cuts = sorted(stems)
    probe = bottom(torch.zeros(1, 3, size, size, device=device), cuts)
    parts: dict[int, tuple[Path, Path]] = {}
    try:
        out = _allocate(
            stems, {k: tuple(probe[k].shape[1:]) for k in cuts}, len(images_u8), aug_idx, views, parts
        )
        mean = torch.tensor(info.mean, device=device)
        std = torch.tensor(info.std, device=device)
        progress = Progress(
            f"{info.name} activations at cut(s) {cuts}", len(images_u8) + len(aug_idx) * views, "images"
        )
        amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

        def run(x: torch.Tensor, crop: Callable[[torch.Tensor], torch.Tensor]) -> dict[int, np.ndarray]:
            with amp:
                acts = bottom(crop(normalize(x.to(device), mean, std)), cuts)
            progress.update(len(x))
            return {k: acts[k].float().cpu().numpy().astype(np.float16) for k in cuts}

        for start in range(0, len(images_u8), batch_size):
            batch = torch.from_numpy(np.array(images_u8[start : start + batch_size]))
            for k, a in run(batch, lambda x: center_crop(x, size)).items():
                out[k][0][start : start + len(a)] = a
        gen = torch.Generator(device=device)
        for view in range(views):
            gen.manual_seed(seed * 1000 + view)
            for start in range(0, len(aug_idx), batch_size):
                batch = torch.from_numpy(np.array(images_u8[aug_idx[start : start + batch_size]]))
                for k, a in run(batch, lambda x: random_resized_crop_flip(x, size, gen)).items():
                    out[k][1][start : start + len(a), view] = a
        for arrays in out.values():
            for arr in arrays:
                arr.flush()
        del out
        _publish(stems, parts)
    except BaseException:
        for pc, pv in parts.values():
            pc.unlink(missing_ok=True)
            pv.unlink(missing_ok=True)
        raise


def _allocate(
    stems: dict[int, Path],
    shapes: dict[int, tuple[int, ...]],
    n: int,
    aug_idx: np.ndarray,
    views: int,
    parts: dict[int, tuple[Path, Path]],
) -> dict[int, tuple[np.memmap, np.memmap]]:
    """Every cut's centre and views arrays as reserved ``.part`` files (recorded in ``parts`` as they
    are made, so a full disk at the second leaves nothing of the first behind)."""
    out = {}
    for k, shape in shapes.items():
        c, v = _paths(stems[k])
        c.parent.mkdir(parents=True, exist_ok=True)
        sweep_parts(c.parent)
        pc, pv = part_path(c), part_path(v)
        parts[k] = (pc, pv)
        out[k] = (
            create_npy(pc, np.float16, (n, *shape)),
            create_npy(pv, np.float16, (len(aug_idx), views, *shape)),
        )
    return out


def _publish(stems: dict[int, Path], parts: dict[int, tuple[Path, Path]]) -> None:
    for k, (pc, pv) in parts.items():
        centre_path, views_path = _paths(stems[k])
        os.replace(pv, views_path)
        os.replace(pc, centre_path)  # last: its presence marks the cut complete


def load_activations(stem: Path, cut: int, n: int, views: int, aug_idx: np.ndarray) -> Activations | None:
    """The cut's cache, memory-mapped; None when missing (or damaged: set aside, to be rebuilt)."""
    c, v = _paths(stem)
    if not c.is_file() or not v.is_file():
        return None
    try:
        shape = tuple(np.load(c, mmap_mode="r").shape[1:])
    except (ValueError, OSError, EOFError):
        shape = ()  # unreadable: open_cache names the problem and sets the file aside
    centre = open_cache(c, (n, *shape))
    if centre is None:
        return None
    arr = open_cache(v, (len(aug_idx), views, *shape))
    if arr is None:
        c.unlink(missing_ok=True)
        return None
    rows = np.full(n, -1, dtype=np.int64)
    rows[aug_idx] = np.arange(len(aug_idx))
    return Activations(cut, centre, arr, rows)
