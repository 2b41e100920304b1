"""``harness embed``: new images through an exported model (``evaluation/models/<run>/``), batched.

The images are prepared as the study prepared its test images (``preprocessing.json``): decoded to
RGB, shorter side resized to ``cache_size`` (bicubic) and centre-cropped square, then centre-cropped
to ``image_size``; the model does the normalisation itself. The ``torch.export`` program
(``model.pt2``) is used where the export has one, else TorchScript (exports of older versions).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from harness.data.images import decode
from harness.data.transforms import center_crop
from harness.errors import DataError
from harness.models.export import PREPROCESSING, PROGRAM, TORCHSCRIPT
from harness.progress import Progress

SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def load_exported(folder: Path) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict]:
    """The exported model and its preprocessing; a folder that is not an export is one line."""
    folder = Path(folder)
    meta_path = folder / PREPROCESSING
    model_path = next((folder / f for f in (PROGRAM, TORCHSCRIPT) if (folder / f).is_file()), None)
    if not meta_path.is_file() or model_path is None:
        raise DataError(
            f"{folder} is not an exported model (it needs {PREPROCESSING} and {PROGRAM} or {TORCHSCRIPT});"
            " point --model at a folder under results/<study>/evaluation/models/"
        )
    try:
        meta = json.loads(meta_path.read_text())
        if model_path.name == PROGRAM:
            return torch.export.load(str(model_path)).module(), meta  # exported in eval mode
        with warnings.catch_warnings():  # torch 2.14 marks TorchScript deprecated
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(str(model_path), map_location="cpu")
    except (ValueError, RuntimeError, OSError) as e:
        raise DataError(f"{folder}: cannot load the exported model ({e}); export it again") from None
    return model.eval(), meta


def list_images(root: Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    found = sorted(p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
    if not found:
        raise DataError(f"{root} holds no images ({', '.join(sorted(SUFFIXES))})")
    return found


@torch.inference_mode()
def embed_folder(model_dir: Path, images: Path, out: Path, batch_size: int = 64) -> int:
    """Embed every image under ``images`` into ``out`` (.npz: embeddings [N, D], paths [N] relative to
    ``images``); returns N. Written whole: a stopped run leaves no half file."""
    model, meta = load_exported(model_dir)
    files = list_images(images)
    cache, size = int(meta.get("cache_size") or meta["image_size"]), int(meta["image_size"])
    progress = Progress(f"embedding {len(files)} images", len(files), "images")
    parts = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        x = torch.from_numpy(np.stack([decode(p, cache) for p in chunk])).permute(0, 3, 1, 2)
        parts.append(model(center_crop(x.float() / 255.0, size)).float())
        progress.update(len(chunk))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.npz")
    try:
        np.savez(
            tmp,
            embeddings=torch.cat(parts).numpy(),
            paths=np.asarray([str(p.relative_to(images)) for p in files]),
        )
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return len(files)
