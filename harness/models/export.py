"""The trained embedding model out: TorchScript and ONNX files a user can load without the harness.

The exported module takes what any image loader gives, an RGB float batch ``[B, 3, S, S]`` in
``[0, 1]``, and returns L2-normalised embeddings ``[B, D]``: the weights' normalisation is inside it,
so the only preprocessing left is the resize and centre crop that ``preprocessing.json`` beside it
describes. Each file is checked against the eager model on a batch: the largest absolute difference
must stay within ``TOLERANCE`` of the embeddings' scale (unit vectors: 1e-4). A format that fails
(an operator ONNX lacks, a trace that does not reproduce the model) is reported and the others are
still written.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

OPSET = 18
TOLERANCE = 1e-4
TORCHSCRIPT, ONNX, PREPROCESSING = "model.torchscript.pt", "model.onnx", "preprocessing.json"


class ImageEmbedder(nn.Module):
    """Normalisation + the trained embedding model, from [0, 1] RGB images to embeddings."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    mean: torch.Tensor
    std: torch.Tensor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


@dataclass
class Exported:
    """What was written, how close each file is to the eager model, and what failed."""

    folder: Path
    files: dict[str, Path] = field(default_factory=dict)
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def _check(name: str, got: torch.Tensor, want: torch.Tensor) -> float:
    diff = float((got.float() - want.float()).abs().max())
    scale = float(want.abs().max()) or 1.0
    if diff > TOLERANCE * scale:
        raise ValueError(f"{name} differs from the eager model by {diff:.2e} (> {TOLERANCE:g} × {scale:.3g})")
    return diff


def _torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> Callable[[torch.Tensor], Any]:
    with warnings.catch_warnings():  # torch 2.14 marks TorchScript deprecated (torch.export is next)
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(module, example, check_trace=False)
        traced.save(str(path))
        loaded = torch.jit.load(str(path))
    return lambda x: loaded(x)


def _onnx(module: nn.Module, example: torch.Tensor, path: Path) -> Callable[[torch.Tensor], Any]:
    import onnxruntime

    with warnings.catch_warnings():  # torch's notice that this (TorchScript-based) exporter will go
        warnings.simplefilter("ignore", DeprecationWarning)
        _onnx_export(module, example, path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


def _onnx_export(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=["images"],
        output_names=["embeddings"],
        opset_version=OPSET,
        dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
        dynamo=False,
    )


FORMATS: dict[str, tuple[str, Callable[[nn.Module, torch.Tensor, Path], Callable[[torch.Tensor], Any]]]] = {
    "torchscript": (TORCHSCRIPT, _torchscript),
    "onnx": (ONNX, _onnx),
}


@torch.no_grad()
def export_model(
    model: nn.Module,
    folder: Path,
    image_size: int,
    preprocessing: dict[str, Any],
    example: torch.Tensor | None = None,
    formats: tuple[str, ...] = tuple(FORMATS),
) -> Exported:
    """Write ``model`` (images normalised by ``preprocessing``'s mean/std -> embeddings) into ``folder``
    in each of ``formats``, each checked on ``example`` (a seeded batch of 4 images when None)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    module = ImageEmbedder(model, preprocessing["mean"], preprocessing["std"]).cpu().eval()
    if example is None:
        example = torch.rand(4, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    want = module(example)
    out = Exported(folder)
    for name in formats:
        filename, write = FORMATS[name]
        path = folder / filename
        try:
            run = write(module, example, path)
            other = example.flip(0)  # another batch order: the file must not have baked in the example
            out.max_abs_diff[name] = max(
                _check(name, run(example), want), _check(name, run(other), want.flip(0))
            )
            out.files[name] = path
        except Exception as e:  # an operator the format lacks, a failed trace, a missing runtime
            path.unlink(missing_ok=True)
            out.failed[name] = (
                f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
            )
            log.warning("export to %s failed (%s); the other formats are written", name, out.failed[name])
    shape = f"[batch, 3, {image_size}, {image_size}]"
    meta: dict[str, Any] = {
        "input": f"float32 RGB {shape} in [0, 1] (the normalisation is inside the model)",
        "output": f"float32 [batch, {int(want.shape[1])}], L2-normalised embeddings",
        "image_size": image_size,
        **{k: preprocessing[k] for k in ("mean", "std", "interpolation", "crop_pct") if k in preprocessing},
        "onnx_opset": OPSET,
        "files": {k: v.name for k, v in out.files.items()},
        "max_abs_diff_vs_eager": out.max_abs_diff,
        "tolerance": TOLERANCE,
        "failed": out.failed,
    }
    meta |= {k: v for k, v in preprocessing.items() if k not in meta}
    (folder / PREPROCESSING).write_text(json.dumps(meta, indent=1, default=str))
    return out
