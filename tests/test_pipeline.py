"""End to end on a generated CUB copy: study run -> evaluate -> report, all in-process on CPU.

One module-scoped run feeds most tests (tiny random-init timm trunk, frozen, 32 px, 4 trials of
2 epochs); nothing is written outside tmp directories.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from fixtures import make_cub
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

import harness.data.cache
import harness.data.images
import harness.study.data
import harness.study.final
import harness.study.runner
from harness.cli import main

NAME = "tiny"


def tiny_config(root: Path, results: Path, n_trials: int = 4) -> dict:
    return {
        "name": NAME,
        "dataset": "cub",
        "data_root": str(root),
        "strict_counts": False,
        "results_dir": str(results),
        "backbone": "test_efficientnet",
        "pretrained": False,
        "trunk": "frozen",
        "image_size": 32,
        "cache_size": None,
        "epochs": 2,
        "budget": {"n_trials": n_trials},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "evaluate": {"top_n": 2, "seed": 0},
        "search_space": {
            # margin is searched (not fixed) so the report draws its R@1-vs-margin figure too
            "margin": {"low": 0.1, "high": 0.3},
            "mining": {"choices": ["semihard", "offline-hard", "random"]},
            "distance": {"choices": ["cosine", "euclidean"]},
            "batch_p": {"choices": [4]},
            "batch_k": {"choices": [2]},
            "embedding_dim": 16,
        },
    }


def write_config(tmp: Path, n_trials: int = 4) -> tuple[Path, Path]:
    root = make_cub(tmp / "data", per_class=4)
    results = tmp / "results"
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(root, results, n_trials), sort_keys=False))
    return path, results


@dataclass
class Run:
    tmp: Path
    config: Path
    results: Path

    @property
    def study_dir(self) -> Path:
        return self.results / NAME

    def study(self) -> optuna.Study:
        storage = JournalStorage(JournalFileBackend(str(self.study_dir / "optuna.journal")))
        return optuna.load_study(study_name=NAME, storage=storage)

    def mlflow(self) -> tuple[MlflowClient, str]:
        client = MlflowClient(tracking_uri=f"sqlite:///{self.results / 'mlflow.db'}")
        exp = client.get_experiment_by_name(NAME)
        assert exp is not None
        return client, exp.experiment_id

    def runs(self, phase: str) -> list:
        client, exp = self.mlflow()
        return client.search_runs([exp], filter_string=f"tags.`harness.phase` = '{phase}'")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("pipeline")
    config, results = write_config(tmp)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        for argv in (["study", "run"], ["evaluate"], ["report"]):
            assert main([*argv, "--config", str(config)]) == 0, argv
    assert not (tmp / "mlruns").exists()  # tracking went to results/mlflow.db
    return Run(tmp, config, results)


def test_split_manifest_is_class_disjoint(pipeline: Run) -> None:
    m = json.loads((pipeline.study_dir / "split_manifest.json").read_text())
    c = {k: set(v) for k, v in m["classes"].items()}
    assert not (c["train"] & c["val"] or c["train"] & c["test"] or c["val"] & c["test"])
    assert c["test"] == set(range(101, 201))
    assert c["train"] | c["val"] == set(range(1, 101))
    assert m["num_classes"] == {"train": 80, "val": 20, "test": 100}
    assert m["num_images"] == {"train": 320, "val": 80, "test": 400}


def test_study_has_the_budgeted_trials(pipeline: Run) -> None:
    trials = pipeline.study().get_trials()
    assert len(trials) == 4
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    for t in trials:
        assert set(t.params) == {"margin", "mining", "distance", "batch_p", "batch_k"}
        assert t.user_attrs["epochs_run"] == 2


def test_mlflow_one_hpo_run_per_trial(pipeline: Run) -> None:
    client, _ = pipeline.mlflow()
    runs = pipeline.runs("hpo")
    trials = {t.number: t for t in pipeline.study().get_trials()}
    assert sorted(int(r.data.tags["harness.trial"]) for r in runs) == sorted(trials)
    for r in runs:
        t = trials[int(r.data.tags["harness.trial"])]
        assert r.info.run_name == str(t.number)
        assert t.user_attrs["mlflow_run_id"] == r.info.run_id
        assert r.info.status == "FINISHED"
        for k, v in t.params.items():
            assert r.data.params[k] == str(v)
        assert r.data.params["embedding_dim"] == "16" and r.data.params["epochs"] == "2"
        history = client.get_metric_history(r.info.run_id, "val_recall_at_1")
        assert sorted(m.step for m in history) == [1, 2]
        assert max(m.value for m in history) == pytest.approx(t.value)
    assert len(pipeline.runs("test")) == 3  # baseline + top 2


def test_test_csv_has_baseline_and_top_configs(pipeline: Run) -> None:
    df = pd.read_csv(pipeline.study_dir / "test.csv")
    assert len(df) == 3
    assert df["config"].iloc[0].startswith("baseline")
    assert df["test_recall@1"].between(0, 1).all()
    done = [t for t in pipeline.study().get_trials() if t.state == TrialState.COMPLETE]
    top = sorted(done, key=lambda t: t.value, reverse=True)[:2]
    assert [int(x) for x in df["trial"].iloc[1:]] == [t.number for t in top]


def test_evaluate_retrains_with_the_trials_fixed_params(pipeline: Run) -> None:
    df = pd.read_csv(pipeline.study_dir / "test.csv")
    assert (df["embedding_dim"].iloc[1:] == 16).all()


def test_report_page(pipeline: Run) -> None:
    page = (pipeline.study_dir / "report" / "index.html").read_text()
    assert page.count("<img ") == 5
    assert page.count('src="data:image/png;base64,') == 5
    assert 'class="dataframe test"' in page
    assert "test_recall@1" in page and "baseline (no triplet training)" in page
    assert len(list((pipeline.study_dir / "report" / "figures").glob("*.png"))) == 5


def test_rerun_adds_no_trials_and_decodes_nothing(pipeline: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = pipeline.results / "cache"
    arrays = sorted(cache.rglob("*.npy"))
    assert [p.parent.name for p in arrays] == ["features", "images"]
    mtimes = [p.stat().st_mtime_ns for p in arrays]

    def no_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("a rerun decoded an image")

    monkeypatch.setattr(harness.data.images, "decode", no_decode)
    monkeypatch.setattr(harness.data.cache, "decode", no_decode)
    monkeypatch.chdir(pipeline.tmp)
    assert main(["study", "run", "--config", str(pipeline.config)]) == 0
    assert len(pipeline.study().get_trials()) == 4
    assert len(pipeline.runs("hpo")) == 4
    assert [p.stat().st_mtime_ns for p in arrays] == mtimes
    assert sorted(cache.rglob("*.npy")) == arrays


def test_hpo_never_reads_test_classes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, results = write_config(tmp_path, n_trials=2)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("hyperparameter search asked for the test split")

    monkeypatch.setattr(harness.study.data, "final_sources", forbidden)
    monkeypatch.setattr(harness.study.final, "final_sources", forbidden)
    objectives: list = []

    class Recording(harness.study.runner.Objective):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            objectives.append(self)

    monkeypatch.setattr(harness.study.runner, "Objective", Recording)
    monkeypatch.chdir(tmp_path)
    assert main(["study", "run", "--config", str(config)]) == 0

    assert len(objectives) == 1
    m = json.loads((results / NAME / "split_manifest.json").read_text())["classes"]
    obj = objectives[0]
    train = set(np.unique(obj.train_src.labels.cpu().numpy()).tolist())
    val = set(np.unique(obj.val_src.labels.cpu().numpy()).tolist())
    assert train == set(m["train"]) and val == set(m["val"])
    assert not (train | val) & set(m["test"])
