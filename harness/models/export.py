"""The trained embedding model out: files a user loads without the harness.

The exported module takes what any image loader gives, an RGB float batch ``[B, 3, S, S]`` in
``[0, 1]``, and returns L2-normalised embeddings ``[B, D]``: the weights' normalisation is inside it,
so the only preprocessing left is the resize and centre crop that ``preprocessing.json`` beside it
describes. Three formats, each with a dynamic batch size:

- ``model.onnx`` (opset ``OPSET``): for onnxruntime and every ONNX tool; written by torch's
  ``torch.export``-based exporter, or, for a model it cannot trace, by the older TorchScript-based
  one while the installed torch still has it (``preprocessing.json`` says which);
- ``model.pt2``: a ``torch.export`` program (``torch.export.load(path).module()``), the format
  PyTorch now recommends;
- ``model.torchscript.pt``: TorchScript, for LibTorch (C++) and older tools; PyTorch 2.14 deprecates
  TorchScript, so its ``torch.jit.load`` warns.

Each file is checked against the eager model on two batches: the largest absolute difference must
stay within ``TOLERANCE`` of the embeddings' scale (unit vectors: 1e-4). A format that fails (an
operator ONNX lacks, a trace that does not reproduce the model) is reported and the others are
still written.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.errors import first_line

log = logging.getLogger(__name__)

OPSET = 18
TOLERANCE = 1e-4
TORCHSCRIPT, ONNX, PROGRAM = "model.torchscript.pt", "model.onnx", "model.pt2"
PREPROCESSING = "preprocessing.json"


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
    written_by: dict[str, str] = field(default_factory=dict)  # the exporter of each file


def _check(name: str, got: torch.Tensor, want: torch.Tensor) -> float:
    diff = float((got.float() - want.float()).abs().max())
    scale = float(want.abs().max()) or 1.0
    if diff > TOLERANCE * scale:
        raise ValueError(f"{name} differs from the eager model by {diff:.2e} (> {TOLERANCE:g} × {scale:.3g})")
    return diff


Run = Callable[[torch.Tensor], Any]
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the dynamo exporter colours its messages


Program = Callable[[], torch.export.ExportedProgram]  # the module's torch.export graph, traced once


def _reason(e: BaseException, limit: int = 200) -> str:
    return f"{type(e).__name__}: {ANSI.sub('', first_line(e))[:limit]}"


def _torchscript(module: nn.Module, example: torch.Tensor, path: Path, program: Program) -> tuple[Run, str]:
    with warnings.catch_warnings():  # torch 2.14 deprecates TorchScript; the format is still asked for
        warnings.simplefilter("ignore", FutureWarning)
        # a shape read as a constant (a transformer's token grid): the file is checked on two batches
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(module, example, check_trace=False)
        traced.save(str(path))
        loaded = torch.jit.load(str(path))
    return (lambda x: loaded(x)), "torch.jit.trace"


def _program(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """The module as one ``torch.export`` graph with a dynamic batch dimension."""
    return torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))


def _pt2(module: nn.Module, example: torch.Tensor, path: Path, program: Program) -> tuple[Run, str]:
    torch.export.save(program(), str(path))
    loaded = torch.export.load(str(path)).module()
    return (lambda x: loaded(x)), "torch.export"


def _onnx(module: nn.Module, example: torch.Tensor, path: Path, program: Program) -> tuple[Run, str]:
    import onnxruntime

    exporter = _onnx_export(module, example, path, program)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return (lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])), exporter


def _onnx_export(module: nn.Module, example: torch.Tensor, path: Path, program: Program) -> str:
    """torch's ``torch.export``-based exporter; where it cannot trace the model, the TorchScript-based
    one (deprecated, kept while torch has it), and both reasons when neither can."""
    try:
        torch.onnx.export(
            program(),
            (example,),
            str(path),
            dynamo=True,
            external_data=False,
            verbose=False,
            input_names=["images"],
            output_names=["embeddings"],
            opset_version=OPSET,
        )
        return "torch.onnx.export(dynamo=True)"
    except Exception as e:  # noqa: BLE001 (an untraceable model: the older exporter may still manage)
        first = _reason(e)
    path.unlink(missing_ok=True)
    try:
        with warnings.catch_warnings():  # its notice that it will go: it is the fallback here
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
                dynamo=False,
                input_names=["images"],
                output_names=["embeddings"],
                opset_version=OPSET,
            )
    except Exception as e:  # neither: both reasons, on the one line the report shows
        raise RuntimeError(f"{_reason(e)} (and the torch.export-based exporter: {first})") from e
    return f"torch.onnx.export(dynamo=False), as the torch.export-based exporter failed: {first}"


FORMATS: dict[str, tuple[str, Callable[[nn.Module, torch.Tensor, Path, Program], tuple[Run, str]]]] = {
    "onnx": (ONNX, _onnx),
    "export": (PROGRAM, _pt2),
    "torchscript": (TORCHSCRIPT, _torchscript),
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
    program = functools.cache(lambda: _program(module, example))  # ONNX and model.pt2 share one trace
    for name in formats:
        filename, write = FORMATS[name]
        path = folder / filename
        try:
            run, out.written_by[name] = write(module, example, path, program)
            # another batch order and size: the file must not have baked in the example
            other = example.flip(0)[: max(1, len(example) - 1)]
            out.max_abs_diff[name] = max(
                _check(name, run(example), want), _check(name, run(other), want.flip(0)[: len(other)])
            )
            out.files[name] = path
        except Exception as e:  # an operator the format lacks, a failed trace, a missing runtime
            path.unlink(missing_ok=True)
            out.written_by.pop(name, None)
            out.failed[name] = _reason(e, 300)
            log.warning("export to %s failed (%s); the other formats are written", name, out.failed[name])
    shape = f"[batch, 3, {image_size}, {image_size}]"
    meta: dict[str, Any] = {
        "input": f"float32 RGB {shape} in [0, 1] (the normalisation is inside the model)",
        "output": f"float32 [batch, {int(want.shape[1])}], L2-normalised embeddings",
        "image_size": image_size,
        **{k: preprocessing[k] for k in ("mean", "std", "interpolation", "crop_pct") if k in preprocessing},
        "onnx_opset": OPSET,
        "written_by": out.written_by,
        "files": {k: v.name for k, v in out.files.items()},
        "max_abs_diff_vs_eager": out.max_abs_diff,
        "tolerance": TOLERANCE,
        "failed": out.failed,
    }
    meta |= {k: v for k, v in preprocessing.items() if k not in meta}
    (folder / PREPROCESSING).write_text(json.dumps(meta, indent=1, default=str))
    return out
