"""A study's MLflow parent run says what the study is doing (issue #19.5): SCHEDULED once created,
RUNNING only while a worker is alive, FINISHED once the budget is met, KILLED when stopped short; a
comparison's and each arm's alike."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import yaml
from fixtures import make_cub
from helpers import compare_config, tiny_config
from mlflow.tracking import MlflowClient

from harness.cli import main


def parents(results: Path) -> dict[str, str]:
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    out = {}
    for exp in client.search_experiments():
        for r in client.search_runs([exp.experiment_id], "tags.`harness.kind` = 'study'"):
            out[r.data.tags["harness.study"]] = r.info.status
    return out


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cub(tmp_path_factory.mktemp("cub"), per_class=4, noise=60.0)


def test_a_study_parent_run_is_running_only_while_a_worker_is_alive(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import harness.study.objective

    results = tmp_path / "results"
    raw = tiny_config(data_root, results, n_trials=3)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["study", "create", "--config", str(path)]) == 0
    assert parents(results) == {"tiny": "SCHEDULED"}
    seen: list[str] = []
    real = harness.study.objective.train

    def train(*args: object, **kw: object) -> object:
        seen.append(parents(results)["tiny"])  # while the worker trains
        if len(seen) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kw)

    with monkeypatch.context() as m:
        m.setattr(harness.study.objective, "train", train)
        assert main(["study", "run", "--config", str(path)]) == 2
    assert seen == ["RUNNING", "RUNNING"]
    assert parents(results) == {"tiny": "KILLED"}  # stopped short of its budget, no worker alive
    assert main(["study", "run", "--config", str(path)]) == 0
    assert parents(results) == {"tiny": "FINISHED"}
    assert main(["evaluate", "--config", str(path)]) == 0
    assert parents(results) == {"tiny": "FINISHED"}


def test_a_comparison_and_its_arms_end_finished(data_root: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(compare_config(data_root, results, n_trials=2, epochs=1)))
    assert main(["study", "create", "--config", str(path)]) == 0
    assert set(parents(results).values()) == {"SCHEDULED"}
    assert main(["study", "worker", "--config", str(path), "--arm", "random"]) == 0
    status = parents(results)
    assert status["tinycmp.random"] == "FINISHED" and status["tinycmp.semihard"] == "SCHEDULED"
    assert status["tinycmp"] == "KILLED"  # one arm done, no worker alive: stopped short
    assert main(["study", "run", "--config", str(path)]) == 0
    assert parents(results) == {
        "tinycmp": "FINISHED",
        "tinycmp.semihard": "FINISHED",
        "tinycmp.random": "FINISHED",
        "tinycmp.offline-hard": "FINISHED",
    }


def test_a_timeout_only_study_is_scheduled_then_finished_when_its_time_ran_out(
    data_root: Path, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    raw = tiny_config(data_root, results) | {"budget": {"n_trials": None, "timeout": 1.0}, "epochs": 1}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["study", "create", "--config", str(path)]) == 0
    assert parents(results) == {"tiny": "SCHEDULED"}  # no trial yet: not FINISHED
    assert main(["study", "run", "--config", str(path)]) == 0
    assert parents(results) == {"tiny": "FINISHED"}  # the worker ran out its time by itself
