"""Decoded-image cache: decode + resize once to a uint8 .npy, memory-mapped on every later load.

Keyed by dataset, image size and ``ImageList.cache_key`` (file list, location, sizes and mtimes),
so a second run of a study never decodes a JPEG, and a changed dataset never reuses a stale cache.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from harness.data.base import ImageList
from harness.data.images import decode

log = logging.getLogger(__name__)


def cache_path(images: ImageList, size: int, cache_dir: Path) -> Path:
    return Path(cache_dir) / "images" / f"{images.dataset}-{size}px-{images.cache_key()}.npy"


def build_image_cache(images: ImageList, size: int, cache_dir: Path, threads: int | None = None) -> Path:
    """Write the N x size x size x 3 uint8 array (atomically: .part then rename); return its path."""
    path = cache_path(images, size, cache_dir)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + f".{os.getpid()}.part")
    arr = np.lib.format.open_memmap(part, mode="w+", dtype=np.uint8, shape=(len(images), size, size, 3))
    threads = threads or min(8, os.cpu_count() or 1)
    log.info("decoding %d images of %s at %dpx into %s", len(images), images.dataset, size, path)
    try:
        # PIL releases the GIL while decoding, so threads scale without pickling arrays around.
        with ThreadPoolExecutor(threads) as pool:
            for i, img in enumerate(pool.map(lambda j: decode(images.absolute(j), size), range(len(images)))):
                arr[i] = img
        arr.flush()
        del arr
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return path


def load_image_cache(images: ImageList, size: int, cache_dir: Path) -> np.ndarray:
    """The cached array, memory-mapped read-only; builds it first if missing."""
    path = build_image_cache(images, size, cache_dir)
    arr = np.load(path, mmap_mode="r")
    if arr.shape != (len(images), size, size, 3):
        raise RuntimeError(f"image cache {path} has shape {arr.shape}; delete it and rerun")
    return arr
