"""Study bookkeeping under user mistakes: changed protocols, always-failing configs, re-created
studies, reproducibility of a trial from (params, seed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
import torch
from fixtures import make_cub
from mlflow.tracking import MlflowClient
from test_pipeline import tiny_config

from harness.errors import ConfigError, HarnessError
from harness.study import parse_config
from harness.study.data import prepare
from harness.study.objective import Objective
from harness.study.runner import create, load_study, run_worker


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cub(tmp_path_factory.mktemp("cub"), per_class=4)


def _cfg(root: Path, results: Path, **over):
    raw = tiny_config(root, results, n_trials=2) | over
    return parse_config(raw)


def test_worker_and_evaluate_refuse_a_changed_protocol(data_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(data_root, tmp_path / "results")
    prepare(cfg)
    create(cfg)
    changed = _cfg(data_root, tmp_path / "results", epochs=5)
    with pytest.raises(ConfigError, match="different search space"):
        run_worker(changed, 0)
    with pytest.raises(ConfigError, match="different search space"):
        load_study(changed)
    assert len(load_study(cfg).trials) == 0  # nothing was added under the old protocol


def test_always_failing_trials_stop_the_worker(data_root: Path, tmp_path: Path) -> None:
    raw = tiny_config(data_root, tmp_path / "results", n_trials=2)
    raw["search_space"] = raw["search_space"] | {"lr": 1.0e37, "mining": "semihard"}
    cfg = parse_config(raw)
    prepare(cfg)
    create(cfg)
    with pytest.raises(HarnessError, match="trials failed"):
        run_worker(cfg, 0)
    states = [t.state for t in load_study(cfg).trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 3  # max(3, n_trials) then stop, not forever


def test_recreated_study_gets_fresh_mlflow_runs(data_root: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    cfg = _cfg(data_root, results)
    prepare(cfg)
    create(cfg)
    run_worker(cfg, 0)
    (results / "tiny" / "optuna.journal").unlink()  # the user deletes the storage and starts over
    raw = tiny_config(data_root, results, n_trials=2)
    raw["search_space"] = raw["search_space"] | {"margin": {"low": 0.6, "high": 0.9}}
    cfg2 = parse_config(raw)
    create(cfg2)
    run_worker(cfg2, 0)
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    parents = client.search_runs([exp.experiment_id], "tags.`harness.kind` = 'study'")
    assert len(parents) == 2
    newest = max(parents, key=lambda r: r.info.start_time)
    runs = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{newest.info.run_id}'")
    assert sorted(r.info.run_name for r in runs) == ["0", "1"]
    for r in runs:
        assert 0.6 <= float(r.data.params["margin"]) <= 0.9  # the new study's params, not the old one's
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_recall_at_1")] == [1, 2]


def test_a_trial_is_reproducible_from_params_and_seed(data_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(data_root, tmp_path / "results")
    prep = prepare(cfg)
    objective = Objective(cfg, prep, torch.device("cpu"))
    params = {"margin": 0.2, "mining": "semihard", "distance": "cosine", "batch_p": 4, "batch_k": 2}
    first = objective(optuna.trial.FixedTrial(params, number=3))
    torch.randn(1000)  # unrelated work in between must not change the next trial
    second = objective(optuna.trial.FixedTrial(params, number=3))
    assert first == second


def test_typed_search_space_errors() -> None:
    base = {"name": "x", "dataset": "cub"}
    with pytest.raises(ConfigError, match="YAML reads '1e-3' as text"):
        parse_config(base | {"search_space": {"lr": "1e-3"}})
    with pytest.raises(ConfigError, match="refresh_every: 0 is less than the minimum of 1"):
        parse_config(base | {"search_space": {"refresh_every": 0}})
    with pytest.raises(ConfigError, match="budget: set n_trials, timeout"):
        parse_config(base | {"budget": {"n_trials": None}})
    assert parse_config(base | {"budget": {"n_trials": None, "timeout": 60}}).budget["timeout"] == 60


def test_batch_p_wider_than_the_training_classes_is_caught_before_the_search(
    data_root: Path, tmp_path: Path
) -> None:
    raw = tiny_config(data_root, tmp_path / "results")
    raw["search_space"] = raw["search_space"] | {"batch_p": {"choices": [4, 90]}}
    with pytest.raises(ConfigError, match="batch_p reaches 90, but only 80 classes"):
        prepare(parse_config(raw))
    shutil.rmtree(tmp_path / "results", ignore_errors=True)
