"""trunk: partial (issue #10): the frozen bottom's cached activations, the trainable top, a study."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from fixtures import make_cub
from helpers import NAME, tiny_config

from harness.cli import main
from harness.errors import ConfigError
from harness.models import TrunkInfo
from harness.models.activations import build_activations, cache_stem, load_activations
from harness.models.partial import Bottom, Top, allowed_blocks
from harness.study import parse_config


@pytest.mark.parametrize(
    "name", ["test_efficientnet", "test_resnet", "test_convnext", "regnetx_002", "mobilenetv3_small_050"]
)
def test_top_of_the_cut_equals_the_whole_trunk(name: str) -> None:
    """The stages come from timm's feature_info: RegNet and MobileNetV3 are cut with no line of
    their own, like the families the harness was first written for."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=0).eval()
    x = torch.randn(3, 3, 64, 64)
    whole = model(x)
    cuts = list(allowed_blocks(model))
    acts = Bottom(model).eval()(x, cuts)
    for k in cuts:
        torch.testing.assert_close(Top(model, k).eval()(acts[k]), whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["test_vit", "test_vit2", "test_vit3"])
def test_a_vision_transformer_is_cut_between_blocks_after_its_token_embedding(name: str) -> None:
    """ViT (class token), with a register token and mean pooling, and with attention pooling: the
    bottom caches the tokens after block n - k (patches, class/register tokens and positions added),
    the top runs the last k blocks, the norm and the head; every cut gives the model's own features,
    at a size other than the model's native 160 px. The top holds no embedding tensor to train."""
    from harness.models.partial import check_cuts
    from harness.models.weights import size_kwargs

    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=0, **size_kwargs(name)).eval()
    cuts = list(allowed_blocks(model))
    assert cuts == list(range(len(model.blocks) + 1))  # 0: only the final norm (and pooling) trains
    check_cuts(model, cuts, name)
    x = torch.randn(2, 3, 64, 64)
    whole = model(x)
    acts = Bottom(model).eval()(x, cuts)
    tokens = (64 // 16) ** 2 + model.num_prefix_tokens
    for k in cuts:
        assert acts[k].shape == (2, tokens, model.embed_dim)
        top = Top(model, k).eval()
        torch.testing.assert_close(top(acts[k]), whole, rtol=0, atol=1e-5)
        trained = {n.split(".")[1] for n, _ in top.named_parameters()}
        assert not trained & {"pos_embed", "cls_token", "reg_token", "patch_embed"}
        assert sum(1 for n in trained if n == "blocks") == (1 if k else 0)
        assert {n for n, _ in top.named_parameters() if n.startswith("model.blocks.")} == {
            n
            for n, _ in model.named_parameters(prefix="model")
            if n.startswith("model.blocks.") and int(n.split(".")[2]) >= len(model.blocks) - k
        }
    # the cut is proved, not assumed: a transformer whose blocks take more than the tokens (relative
    # positions) fails the proof in one line
    relpos = timm.create_model("test_vit_relpos", num_classes=0).eval()
    with pytest.raises(ConfigError, match="cannot cut test_vit_relpos"):
        check_cuts(relpos, [1], "test_vit_relpos", size=160)


INFO = TrunkInfo("test_efficientnet", "random", 256, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _images(n: int = 12, px: int = 40) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, px, px, 3), dtype=np.uint8)


def test_the_cached_forward_equals_the_uncached_one_on_the_same_view(tmp_path: Path) -> None:
    """Centre view through cache (fp16) + top == the whole trunk on the same centre crop."""
    from harness.data.transforms import center_crop, normalize

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", num_classes=0).eval()
    images, aug = _images(), np.arange(6)
    stems = {k: tmp_path / f"c{k}" for k in (1, 2)}
    build_activations(Bottom(model), INFO, images, 32, stems, 2, 0, aug, torch.device("cpu"))
    x = center_crop(normalize(torch.from_numpy(images), INFO.mean, INFO.std), 32)
    with torch.no_grad():
        whole = model(x)
        for k in (1, 2):
            acts = load_activations(stems[k], k, len(images), 2, aug)
            assert acts is not None and acts.views.shape[:2] == (6, 2)
            cached = Top(model, k).eval()(torch.from_numpy(np.asarray(acts.centre, dtype=np.float32)))
            torch.testing.assert_close(cached, whole, rtol=0, atol=2e-2)  # fp16 storage of activations


def test_the_cache_key_changes_with_cut_views_size_weights_seed_precision_and_device(tmp_path: Path) -> None:
    aug = np.arange(5)
    base = dict(
        cache_dir=tmp_path,
        dataset="cub",
        images_key="k",
        info=INFO,
        size=32,
        cache_px=40,
        cut=1,
        views=4,
        seed=0,
        aug_idx=aug,
    )
    ref = cache_stem(**base)  # type: ignore[arg-type]
    others = [
        base | {"cut": 2},
        base | {"views": 8},
        base | {"size": 48},
        base | {"info": TrunkInfo("test_efficientnet", "imagenet-lite0", 256, INFO.mean, INFO.std)},
        base | {"seed": 1},
        base | {"images_key": "other"},
        base | {"aug_idx": np.arange(6)},
        base | {"precision": "bf16"},
        base | {"device_type": "cuda"},  # CUDA's generator draws other crops from the same seed
    ]
    stems = {cache_stem(**o) for o in others}  # type: ignore[arg-type]
    assert ref not in stems and len(stems) == len(others)


def test_a_damaged_centre_file_is_set_aside_and_rebuilt(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", num_classes=0).eval()
    images, aug = _images(), np.arange(6)
    stem = tmp_path / "c1"
    build_activations(Bottom(model), INFO, images, 32, {1: stem}, 2, 0, aug, torch.device("cpu"))
    centre = tmp_path / "c1-centre.npy"
    centre.write_bytes(centre.read_bytes()[: centre.stat().st_size // 2])  # a copy cut short
    assert load_activations(stem, 1, len(images), 2, aug) is None  # not a crash: rebuild it
    assert (tmp_path / "c1-centre.npy.damaged").is_file() and not centre.exists()
    centre.write_bytes(b"not an npy file")
    assert load_activations(stem, 1, len(images), 2, aug) is None


def test_parts_of_killed_writers_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys

    from harness.data.cache import _machine, part_path, sweep_parts

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead = int(gone.stdout)  # a pid that no longer runs
    here = _machine()  # host and pid namespace
    assert here.startswith(socket.gethostname() + "~")
    killed = tmp_path / f"a-views.npy.{here}.{dead}.part"
    live = part_path(tmp_path / "b-views.npy")
    elsewhere = tmp_path / f"c-views.npy.some-other-node~1.{dead}.part"
    suffix = tmp_path / f"d-views.npy.gpu.{here}.{dead}.part"  # host "gpu.<ours>", not ours
    for p in (killed, live, elsewhere, suffix):
        p.write_bytes(b"x")
    assert live.name == f"b-views.npy.{here}.{os.getpid()}.part"
    sweep_parts(tmp_path)
    assert not killed.exists() and live.exists() and elsewhere.exists() and suffix.exists()


def test_a_random_init_partial_study_trains_the_top_of_the_network_it_cached(tmp_path: Path) -> None:
    """pretrained: false: the cached bottom and every trial's top come from one seeded network."""
    from harness.models import create_trunk
    from harness.study.trunks import get_trunk

    a, info = create_trunk("test_efficientnet", pretrained=False, seed=3)
    torch.manual_seed(123)  # the global RNG does not matter
    b, _ = create_trunk("test_efficientnet", pretrained=False, seed=3)
    assert info.weights == "random-seed3"
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), k
    cfg = parse_config(
        {"name": "x", "dataset": "cub", "trunk": "partial", "pretrained": False, "seed": 3}
        | {"backbone": "test_efficientnet", "results_dir": str(tmp_path)}
    )
    pool = get_trunk(cfg).pool(torch.device("cpu"))
    first = {k: v.clone() for k, v in pool.get().state_dict().items()}
    with torch.no_grad():
        for p in pool.get().parameters():
            p.add_(1.0)  # a trial trains the trunk
    for (k, x), y in zip(pool.get().state_dict().items(), a.state_dict().values(), strict=True):
        assert torch.equal(x, y) and torch.equal(first[k], y), k  # the next trial starts from it again


def test_references_use_a_cached_cut() -> None:
    from harness.study.final import reference_params

    def cuts_of(space: dict) -> set[int]:
        cfg = parse_config(
            {"name": "x", "dataset": "cub", "trunk": "partial", "pretrained": False}
            | {"backbone": "efficientnet_lite0", "search_space": space}
        )
        return {p.train_blocks for p in reference_params(cfg)}

    assert cuts_of({"train_blocks": {"choices": [2, 3]}}) == {2}  # 1 (the default) is not cached
    assert cuts_of({"train_blocks": {"choices": [0, 2]}}) == {0}  # as near to 1, the smaller
    assert cuts_of({"train_blocks": {"low": 1, "high": 3}}) == {1}
    assert cuts_of({"train_blocks": 3}) == {3}


def test_a_view_is_drawn_per_image_and_evaluation_takes_the_centre() -> None:
    from harness.training import ActivationSource

    centre = np.zeros((4, 2, 1, 1), dtype=np.float16)
    views = np.broadcast_to(np.arange(1, 4, dtype=np.float16).reshape(1, 3, 1, 1, 1), (4, 3, 2, 1, 1)).copy()
    labels, idx = np.arange(4), np.arange(4)
    src = ActivationSource(centre, views, np.arange(4), labels, idx, torch.device("cpu"))  # view v holds v+1
    i = torch.arange(4)
    assert torch.equal(src.batch(i, train=False), torch.zeros(4, 2, 1, 1))
    drawn = {float(v) for _ in range(20) for v in src.batch(i, train=True)[:, 0, 0, 0]}
    assert drawn == {1.0, 2.0, 3.0}  # every view is used, none is the centre


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "over, words",
    [
        (
            {"backbone": "efficientnet_lite0", "search_space": {"train_blocks": 9}},
            ["train_blocks: 9", "0..7"],
        ),
        (
            {"backbone": "resnet18", "search_space": {"train_blocks": {"choices": [0, 1]}}},
            ["train_blocks: 0", "1..4"],
        ),
        ({"backbone": "test_coatnet"}, ["trunk: partial cannot cut test_coatnet", "LAYOUTS"]),
        ({"backbone": "test_byobnet"}, ["is not one of numbered stages", "LAYOUTS"]),
    ],
)
def test_partial_errors_name_the_allowed_range(over: dict, words: list[str]) -> None:
    """Checked against the built backbone (its stages are timm's), before anything is written."""
    from harness.models import create_trunk
    from harness.study.trunks import get_trunk

    cfg = parse_config({"name": "x", "dataset": "cub", "trunk": "partial", "pretrained": False} | over)
    trunk, _ = create_trunk(cfg.backbone, pretrained=False)
    with pytest.raises(ConfigError) as info:
        get_trunk(cfg).check(trunk)
    for w in words:
        assert w in str(info.value), str(info.value)


def test_partial_params_need_trunk_partial() -> None:
    with pytest.raises(ConfigError, match="search_space.train_blocks applies only to trunk: partial"):
        parse_config({"name": "x", "dataset": "cub", "search_space": {"train_blocks": 1}})


# --- a study -----------------------------------------------------------------------------------------


def test_a_two_trial_partial_study_runs_on_the_tiny_fixtures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_cub(tmp_path / "data", per_class=4, noise=60.0)
    raw = tiny_config(root, tmp_path / "results", n_trials=2)
    raw |= {
        "trunk": "partial",
        "backbone": "test_efficientnet",
        "partial": {"views": 2, "seed": 0},
        "epochs": 2,
        "evaluate": {"top_n": 1, "seeds": 2, "references": True},
    }
    raw["search_space"] = raw["search_space"] | {
        "train_blocks": {"choices": [1, 2]},
        "trunk_lr": {"low": 1e-5, "high": 1e-4, "log": True},
        "bn": {"choices": ["frozen", "train"]},
        "mining": {"choices": ["semihard", "offline-hard"]},
    }
    path = tmp_path / "partial.yaml"
    path.write_text(yaml.safe_dump(raw))
    for argv in (["study", "run"], ["evaluate"], ["report"]):
        assert main([*argv, "--config", str(path)]) == 0, argv
    # issue #16, item 24: the log said "N images, 2 views each"; only training-class images get views
    labels = (root / "image_class_labels.txt").read_text().splitlines()
    train_images = sum(1 for line in labels if int(line.split()[1]) <= 100)  # CUB classes 1-100
    said = capsys.readouterr().err
    assert f"centre views, and 2 views of each of the {train_images} training-class images" in said, said[
        -2000:
    ]
    cache = sorted((tmp_path / "results" / "cache" / "activations").glob("*-centre.npy"))
    assert len(cache) == 2 and {"cut1" in c.name or "cut2" in c.name for c in cache} == {True}
    import pandas as pd

    test = pd.read_csv(tmp_path / "results" / NAME / "test.csv")
    assert list(test["kind"]) == ["baseline", "top", "reference", "reference"]
    assert test["test_recall@1"].between(0, 1).all()
    # a rerun reuses the caches: nothing is rebuilt
    mtimes = [c.stat().st_mtime_ns for c in cache]
    assert main(["study", "run", "--config", str(path)]) == 0
    assert [c.stat().st_mtime_ns for c in cache] == mtimes
    # only training sources hold the augmented views; a worker keeps one cut resident
    from harness.study.config import load_config
    from harness.study.data import Resident, final_sources, hpo_sources, prepare
    from harness.study.objective import Objective

    cpu = torch.device("cpu")
    prep = prepare(load_config(path), cpu, write=False)
    train, val = hpo_sources(prep, cpu, 2)
    trainval, test = final_sources(prep, cpu, 0, 2)
    assert train.views is not None and trainval.views is not None  # type: ignore[attr-defined]
    assert val.views is None and test.views is None  # type: ignore[attr-defined]
    loads: list[int | None] = []
    resident = Resident(lambda cut: loads.append(cut) or hpo_sources(prep, cpu, cut))
    objective = Objective.__new__(Objective)
    objective.prep, objective.device, objective.sources = prep, cpu, resident
    for cut in (prep.mode.cut(None), 1, 1, 2):
        objective.sources.get(cut)
    assert loads == [1, 2]  # None is the lowest cut: not loaded twice; one cut resident at a time


def test_train_blocks_beyond_the_trunks_stages_fail_before_anything_is_written(tmp_path: Path) -> None:
    root = make_cub(tmp_path / "data", per_class=2)
    raw = tiny_config(root, tmp_path / "results")
    raw |= {"trunk": "partial", "backbone": "test_efficientnet"}
    raw["search_space"] = raw["search_space"] | {"train_blocks": 6}  # test_efficientnet has 5 stages
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["study", "run", "--config", str(path)]) == 2
    assert not (tmp_path / "results" / NAME / "split_manifest.json").exists()


def test_a_partial_vit_study_trains_its_last_blocks_and_exports(tmp_path: Path) -> None:
    """trunk: partial on timm's test_vit at 32 px (its native size is 160): the tokens after the cut
    are cached, the trials train the blocks above it, and the final model exports whole."""
    import json

    import pandas as pd

    root = make_cub(tmp_path / "data", per_class=4, noise=60.0)
    raw = tiny_config(root, tmp_path / "results", n_trials=2)
    raw |= {"trunk": "partial", "backbone": "test_vit", "partial": {"views": 1, "seed": 0}, "epochs": 1}
    raw |= {"evaluate": {"top_n": 1, "seeds": 1, "references": False}}
    raw["search_space"] = raw["search_space"] | {"train_blocks": {"choices": [0, 2]}, "mining": "semihard"}
    path = tmp_path / "vit.yaml"
    path.write_text(yaml.safe_dump(raw))
    for argv in (["study", "run"], ["evaluate"]):
        assert main([*argv, "--config", str(path)]) == 0, argv
    cache = sorted((tmp_path / "results" / "cache" / "activations").glob("*-centre.npy"))
    assert len(cache) == 2
    assert {np.load(c, mmap_mode="r").shape[1:] for c in cache} == {(2 * 2 + 1, 64)}  # tokens x dim
    test = pd.read_csv(tmp_path / "results" / NAME / "test.csv")
    assert list(test["kind"]) == ["baseline", "top"] and test["test_recall@1"].between(0, 1).all()
    (folder,) = (tmp_path / "results" / NAME / "evaluation" / "models").iterdir()
    meta = json.loads((folder / "preprocessing.json").read_text())
    assert not meta["failed"] and set(meta["files"]) == {"onnx", "export", "torchscript"}
