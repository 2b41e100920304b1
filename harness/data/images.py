"""Decoding one image file, with the error a user can act on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from harness.errors import DataError


def decode(path: Path, size: int | None = None) -> np.ndarray:
    """Decode to RGB uint8 HxWx3; with ``size``: shorter side to ``size``, centre crop square."""
    if not path.is_file():
        raise DataError(f"image listed in the metadata is missing: {path}; re-extract the dataset")
    try:
        with Image.open(path) as f:
            if size is not None and f.format == "JPEG":
                f.draft("RGB", (size, size))  # let libjpeg downscale by 2^n while decoding
            im: Image.Image = f.convert("RGB")
            if size is not None:
                w, h = im.size
                scale = size / min(w, h)
                nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
                im = im.resize((nw, nh), Image.Resampling.BICUBIC)
                left, top = (nw - size) // 2, (nh - size) // 2
                im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"corrupt image {path} ({e}); replace it from the official archive") from e
