"""Study bookkeeping under user mistakes: changed protocols, always-failing configs, re-created
studies, reproducibility of a trial from (params, seed)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import optuna
import pytest
import torch
from fixtures import make_cub
from helpers import tiny_config
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness.errors import ConfigError, HarnessError
from harness.study import parse_config
from harness.study.data import prepare
from harness.study.identity import load_study
from harness.study.lifecycle import create
from harness.study.objective import Objective, suggest_params
from harness.study.optuna_api import storage_of, trial_id
from harness.study.storage import HEARTBEAT_ATTR, OWNER_ATTR, owner_is_dead, owner_record, process_start
from harness.study.sweep import StaleTrialHandler, sweep
from harness.study.worker import finished, run_worker


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
    # each failed trial says why where the report points (#19.5), and the report says it too
    for n in range(3):
        text = (cfg.study_dir / "trials" / str(n) / "error.txt").read_text()
        assert text.startswith(f"trial {n} failed: loss is nan at epoch 1; lower lr"), text
    from harness.report import build_report

    page = Path(build_report(cfg)).read_text()
    assert "No trial completed (3 failed: loss is nan at epoch 1; lower lr (3 trials)" in page
    assert f"{cfg.study_dir / 'trials'}/&lt;n&gt;/error.txt" in page


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
    assert parse_config(base | {"budget": {"n_trials": None, "timeout": 60}}).budget.timeout == 60


def test_batch_p_wider_than_the_training_classes_is_caught_before_the_search(
    data_root: Path, tmp_path: Path
) -> None:
    raw = tiny_config(data_root, tmp_path / "results")
    raw["search_space"] = raw["search_space"] | {"batch_p": {"choices": [4, 90]}}
    with pytest.raises(ConfigError, match="leaving 80 to train on, but search_space.batch_p reaches 90"):
        prepare(parse_config(raw))
    shutil.rmtree(tmp_path / "results", ignore_errors=True)


# --- dead workers: stale-trial detection, re-queue, and the budget (issue #4) -------------------------


def test_process_start_tells_live_zombie_and_gone_processes_apart() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert process_start(child.pid) not in (None, "?")
        owner = owner_record(0) | {"trial_id": 7, "pid": child.pid, "pid_start": process_start(child.pid)}
        assert not owner_is_dead(owner, 7)
        assert not owner_is_dead(owner, 8)  # a record copied from the trial this one retries
        # another host, another container with the same hostname (own pid namespace), another boot:
        # the pid means nothing here, only the grace period tells
        machine = owner["machine"].split("|")
        for i, other in ((0, "elsewhere"), (2, "pid:[1]"), (1, "another-boot")):
            assert not owner_is_dead(
                owner | {"machine": "|".join(machine[:i] + [other] + machine[i + 1 :])}, 7
            )
        assert not owner_is_dead({k: v for k, v in owner.items() if k != "machine"}, 7)  # older record
        assert owner_is_dead(owner | {"pid_start": "1"}, 7)  # pid recycled by another process
        child.kill()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert process_start(child.pid) is None  # not reaped yet (a zombie): dead all the same
        assert owner_is_dead(owner, 7)
    finally:
        child.kill()
        child.wait()
    assert process_start(child.pid) is None


def _running_trial(study: optuna.Study, cfg, owner: dict | None = None, beat: float | None = None) -> int:
    trial = study.ask()
    suggest_params(trial, cfg.search_space)
    if owner is not None:
        trial.set_user_attr(OWNER_ATTR, owner | {"trial_id": trial_id(trial)})
    if beat is not None:
        storage_of(study).set_trial_system_attr(trial_id(trial), HEARTBEAT_ATTR, [trial_id(trial), beat])
    return trial.number


def test_journal_heartbeat_grace_period(data_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(data_root, tmp_path / "results")
    prepare(cfg)
    create(cfg)
    study = load_study(cfg, on_stale=StaleTrialHandler(cfg))  # as a worker opens it
    remote = {"host": "another-node", "pid": 1, "pid_start": "1"}
    fresh = _running_trial(study, cfg, remote, beat=time.time())
    old = _running_trial(study, cfg, remote, beat=time.time() - 1000)
    sweep(study)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[fresh] == TrialState.RUNNING
    assert states[old] == TrialState.FAIL
    (retry,) = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert retry.system_attrs["retry_history"] == [old] and retry.params == study.trials[old].params
    sweep(study)  # a second sweep (another worker) neither fails nor re-queues anything again
    assert [t.state for t in study.get_trials()].count(TrialState.WAITING) == 1


def test_worker_waits_for_in_flight_trials_instead_of_overshooting(data_root: Path, tmp_path: Path) -> None:
    """n_trials=2 with one trial in flight in another (live) process: the worker runs ONE new trial,
    then waits; when that process dies, its trial is failed, re-queued and run: exactly 2 finished."""
    cfg = _cfg(
        data_root, tmp_path / "results", fault_tolerance={"heartbeat_interval": 1, "grace_period": 3600}
    )
    prepare(cfg)
    create(cfg)
    study = load_study(cfg)
    other = subprocess.Popen(["sleep", "60"])
    owner = owner_record(0) | {"pid": other.pid, "pid_start": process_start(other.pid)}
    in_flight = _running_trial(study, cfg, owner, beat=time.time())
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(n=run_worker(cfg, 0)))
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while finished(load_study(cfg)) < 1:
            assert time.monotonic() < deadline and worker.is_alive()
            time.sleep(0.1)
        time.sleep(2.5)  # the worker now waits: it must not start a third trial
        assert len(load_study(cfg).trials) == 2 and worker.is_alive()
    finally:
        other.kill()
        other.wait()
    worker.join(timeout=60)
    assert not worker.is_alive() and result["n"] == 2
    trials = load_study(cfg).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[2].system_attrs["retry_history"] == [in_flight]
