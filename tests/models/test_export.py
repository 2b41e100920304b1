"""The trained model out: TorchScript and ONNX files equal to the eager model within the tolerance,
loadable without the harness, with their preprocessing beside them; a format that fails is named and
the others are still written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.models import EmbeddingHead, create_trunk
from harness.models.embedder import Embedder
from harness.models.export import ONNX, PREPROCESSING, PROGRAM, TOLERANCE, TORCHSCRIPT, export_model

PREP = {
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "interpolation": "bicubic",
    "crop_pct": 0.95,
}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    trunk, info = create_trunk("test_efficientnet", pretrained=False)
    return Embedder(trunk, EmbeddingHead(info.num_features, 16)).eval()


def test_onnx_torch_export_and_torchscript_equal_the_eager_model(tmp_path: Path) -> None:
    import onnxruntime

    model = _model()
    out = export_model(model, tmp_path / "export", 32, PREP | {"backbone": "test_efficientnet"})
    assert not out.failed and set(out.files) == {"torchscript", "onnx", "export"}
    assert all(d <= TOLERANCE for d in out.max_abs_diff.values()), out.max_abs_diff
    meta = json.loads((tmp_path / "export" / PREPROCESSING).read_text())
    assert meta["mean"] == list(PREP["mean"]) and meta["image_size"] == 32 and meta["onnx_opset"] == 18
    assert meta["backbone"] == "test_efficientnet" and meta["files"] == {
        "torchscript": TORCHSCRIPT,
        "onnx": ONNX,
        "export": PROGRAM,
    }
    assert meta["written_by"]["onnx"] == "torch.onnx.export(dynamo=True)"  # not the deprecated exporter
    assert not list((tmp_path / "export").glob("*.data"))  # one self-contained ONNX file
    # loaded on their own, on a batch of another size than the export's example
    images = torch.rand(7, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mean, std = torch.tensor(PREP["mean"]).view(1, 3, 1, 1), torch.tensor(PREP["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = model((images - mean) / std)
        with pytest.warns(FutureWarning):  # torch 2.14 deprecates TorchScript: the file still loads
            script = torch.jit.load(str(tmp_path / "export" / TORCHSCRIPT))(images)
        program = torch.export.load(str(tmp_path / "export" / PROGRAM)).module()(images)
    session = onnxruntime.InferenceSession(
        str(tmp_path / "export" / ONNX), providers=["CPUExecutionProvider"]
    )
    (onnx_out,) = session.run(None, {"images": images.numpy()})
    assert want.shape == (7, 16)
    assert float((script - want).abs().max()) <= TOLERANCE
    assert float((program - want).abs().max()) <= TOLERANCE
    assert float(np.abs(onnx_out - want.numpy()).max()) <= TOLERANCE
    assert np.allclose(np.linalg.norm(onnx_out, axis=1), 1.0, atol=1e-5)


class _Eigen(torch.nn.Module):
    """A model with an operator ONNX (opset 18) has no export for."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        outer = x[:, :, None] * x[:, None, :]  # per image: the batch's rows stay independent
        return torch.nn.functional.normalize(x + torch.linalg.eigh(outer).eigenvalues[:, -1:], dim=1)


def test_an_operator_onnx_lacks_is_named_and_the_rest_is_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = export_model(_Eigen(), tmp_path, 8, PREP)
    assert set(out.files) == {"torchscript", "export"} and (tmp_path / TORCHSCRIPT).is_file()
    assert not (tmp_path / ONNX).exists()
    assert "linalg_eigh" in out.failed["onnx"] and "torch.export-based exporter" in out.failed["onnx"]
    assert json.loads((tmp_path / PREPROCESSING).read_text())["failed"] == out.failed
    assert "export to onnx failed" in caplog.text


def test_a_partial_trunk_exports_as_bottom_then_top(tmp_path: Path) -> None:
    """trunk: partial trains a top on cached activations; the exported model runs the frozen bottom
    to the cut, then the trained top: with the top untrained it is the whole backbone again."""
    from harness.models.partial import Bottom, Stacked, Top

    torch.manual_seed(0)
    trunk, info = create_trunk("test_efficientnet", pretrained=False)
    trunk.eval()
    head = EmbeddingHead(info.num_features, 8).eval()
    whole = Stacked(Bottom(trunk), 1, Embedder(Top(trunk, 1), head)).eval()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(whole(x), Embedder(trunk, head)(x), rtol=1e-5, atol=1e-6)
    out = export_model(whole, tmp_path, 32, PREP)
    assert not out.failed and all(d <= TOLERANCE for d in out.max_abs_diff.values())


def test_harness_embed_a_folder_with_an_exported_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fixtures import make_cub
    from helpers import one_error_line

    from harness.cli import main
    from harness.data.images import decode
    from harness.data.transforms import center_crop

    model = _model()
    export_model(model, tmp_path / "export", 32, PREP | {"cache_size": 36})
    cub = make_cub(tmp_path / "data", n_classes=3, per_class=3)
    images = cub / "images"
    out = tmp_path / "new.npz"

    def embed(model_dir: Path, folder: Path, to: Path, *more: str) -> int:
        return main(["embed", "--model", str(model_dir), "--images", str(folder), "--out", str(to), *more])

    assert embed(tmp_path / "export", images, out, "--batch-size", "4") == 0
    got = np.load(out)
    files = sorted(images.rglob("*.jpg"))
    assert list(got["paths"]) == [str(p.relative_to(images)) for p in files]
    x = torch.from_numpy(np.stack([decode(p, 36) for p in files])).permute(0, 3, 1, 2).float() / 255.0
    mean, std = torch.tensor(PREP["mean"]).view(1, 3, 1, 1), torch.tensor(PREP["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = model((center_crop(x, 32) - mean) / std)
    assert got["embeddings"].shape == (9, 16)
    assert float(np.abs(got["embeddings"] - want.numpy()).max()) <= TOLERANCE
    # an export without the torch.export program (an older version's) embeds through TorchScript
    (tmp_path / "export" / PROGRAM).unlink()
    assert embed(tmp_path / "export", images, tmp_path / "old.npz") == 0
    assert float(np.abs(np.load(tmp_path / "old.npz")["embeddings"] - want.numpy()).max()) <= TOLERANCE
    capsys.readouterr()
    assert embed(tmp_path, images, out) == 2
    assert "is not an exported model" in one_error_line(2, capsys.readouterr().err)
    (tmp_path / "empty").mkdir()
    assert embed(tmp_path / "export", tmp_path / "empty", tmp_path / "x.npz") == 2
    assert "holds no images" in one_error_line(2, capsys.readouterr().err)
    assert not (tmp_path / "x.npz").exists()
