"""Backbones: offline Lite0 weights mapped by position, checkpoints, errors; the fine-tune path."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from harness.errors import ConfigError, DataError, HarnessError
from harness.models import EmbeddingHead, create_trunk
from harness.models.embedder import Embedder
from harness.models.pretrained import HALF, load_by_position, package_file
from harness.params import TrialParams
from harness.training import ImageSource, train


def test_lite0_weights_land_in_timm_lite0_in_order() -> None:
    trunk, info = create_trunk("efficientnet_lite0", pretrained=True)
    source = torch.load(package_file("efficientnet_lite0"), map_location="cpu", weights_only=True)
    target = trunk.state_dict()
    src = [v for k, v in source.items() if not k.startswith("_fc.")]  # the classifier is removed
    assert len(src) == len(target)
    for s, (name, t) in zip(src, target.items()):
        assert torch.equal(s, t), name
    assert info.weights == "imagenet-lite0" and info.num_features == 1280
    assert (info.mean, info.std) == HALF


def test_load_by_position_rejects_shape_mismatch() -> None:
    model = timm.create_model("test_resnet", pretrained=False)
    bad = {k: torch.zeros(1) for k in model.state_dict()}
    with pytest.raises(DataError, match="has shape"):
        load_by_position(model, bad, "bad.pth")


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    trunk, _ = create_trunk("test_resnet", pretrained=False)
    path = tmp_path / "trunk.pth"
    torch.save({"state_dict": trunk.state_dict()}, path)
    again, info = create_trunk("test_resnet", checkpoint=path)
    assert info.weights.startswith("ckpt-trunk-")
    for (k, a), b in zip(trunk.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    # new weights in the same file name a new cache key: caches of the old ones are not reused
    torch.save({"state_dict": {k: v + 1 for k, v in trunk.state_dict().items()}}, path)
    _, other = create_trunk("test_resnet", checkpoint=path)
    assert other.weights.startswith("ckpt-trunk-") and other.weights != info.weights


def test_backbone_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown timm backbone 'resnet_nope'"):
        create_trunk("resnet_nope")
    with pytest.raises(ConfigError, match="weights for 'resnet50' are not in the cache .*HF_HUB_OFFLINE=1"):
        create_trunk("resnet50", pretrained=True)  # the suite runs with the hub off (conftest.py)
    with pytest.raises(
        ConfigError, match="timm has no tag 'untrained' for 'efficientnet_lite1'; its pretrained tags: none"
    ):
        create_trunk("efficientnet_lite1.untrained", pretrained=True)
    with pytest.raises(DataError, match="does not exist"):
        create_trunk("test_resnet", checkpoint=tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(HarnessError, match="cannot be read"):
        create_trunk("test_resnet", checkpoint=tmp_path / "junk.pth")


def test_finetune_step_trains_trunk_and_head() -> None:
    """trunk: finetune: uint8 images augmented in batch, gradients reach the trunk."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(6).numpy()
    images = (torch.rand(len(labels), 40, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
    trunk, info = create_trunk("test_resnet", pretrained=False)
    model = Embedder(trunk, EmbeddingHead(info.num_features, 8))
    before = [p.detach().clone() for p in model.trunk.parameters()]
    src = ImageSource(
        images, labels, torch.arange(len(labels)).numpy(), 32, info.mean, info.std, torch.device("cpu")
    )
    x = src.batch(torch.arange(4), train=True)
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    history = train(model, TrialParams(0.2, 4, 2, "cosine", "semihard", 1e-2, 8), src, 1, torch.device("cpu"))
    assert len(history) == 1 and history[0]["train_img_per_s"] > 0
    moved = [not torch.equal(a, b) for a, b in zip(before, model.trunk.parameters())]
    assert any(moved)


def test_trunk_pool_keeps_one_module_and_resets_weights_per_trial() -> None:
    """A worker's later trials reuse the trunk module; a random-init trunk draws fresh weights from
    each trial's seed, as a new model would. (Compiled work is reused through torch's graph caches:
    tests/training/test_compiled_step.py.)"""
    from harness.study.config import parse_config
    from harness.study.trunks import TrunkPool

    cfg = parse_config(
        {
            "name": "x",
            "dataset": "cub",
            "backbone": "test_resnet",
            "pretrained": False,
            "trunk": "finetune",
            "image_size": 32,
        }
    )
    pool = TrunkPool(cfg, torch.device("cpu"))
    model = pool.get()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # trial 1 trains
    torch.manual_seed(11)
    again = pool.get()  # trial 2
    assert again is model
    torch.manual_seed(11)
    fresh, _ = create_trunk("test_resnet", pretrained=False)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in model.state_dict().items())


def test_head_stays_fp32_under_autocast() -> None:
    head = EmbeddingHead(16, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(torch.randn(4, 16).bfloat16())
    assert out.dtype == torch.float32
