"""A study's life on disk: its sampler never replays draws after a restart, a torn journal is
repaired, interrupted trials are re-queued once and resumed from their own checkpoints, crashes
and full disks end a trial in a final state, and delete refuses while work or results would be lost."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from fixtures import make_cub
from helpers import NAME, REPO, config, finished, journal, params_of, study_file, study_of, tiny_config, write
from helpers import error_line as one_error_line
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from processes import patience, run_group

from harness.cli import main


def _finished_params(results: Path) -> list[tuple]:
    from helpers import NAME
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    storage = JournalStorage(JournalFileBackend(str(results / NAME / "optuna.journal")))
    import optuna

    study = optuna.load_study(study_name=NAME, storage=storage)
    done = (TrialState.COMPLETE, TrialState.PRUNED)
    return [tuple(sorted(t.params.items())) for t in study.get_trials(deepcopy=False, states=done)]


TORN = b'{"op_code":5,"worker_id":"dead-worker","trial_id":1,"param_na'


def _memory_study() -> optuna.Study:
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="maximize")
    return study


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_an_interrupted_study_proposes_the_configs_of_one_that_never_stopped(
    sampler: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM in trial 2, then the same command again: the retry of trial 2 takes trial number 3,
    and every later fresh trial still gets the draw an uninterrupted study gives it."""
    import harness.study.objective

    root = make_cub(tmp_path / "data", per_class=4, noise=60.0)

    def raw(results: Path) -> dict:
        r = tiny_config(root, results, n_trials=6)
        r["epochs"] = 2
        r["sampler"] = {"name": sampler, "seed": 0, "n_startup_trials": 3}
        r["search_space"] = r["search_space"] | {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}
        return r

    clean = tmp_path / "clean.yaml"
    clean.write_text(yaml.safe_dump(raw(tmp_path / "clean")))
    assert main(["study", "run", "--config", str(clean)]) == 0

    real = harness.study.objective.train
    hit: list[int] = []

    def interrupted(*args: object, **kw: object) -> object:
        on_epoch = kw["on_epoch"]

        def stop_after_first(epoch: int, stats: dict) -> None:
            on_epoch(epoch, stats)  # type: ignore[operator]
            trial = on_epoch.__self__.trial  # type: ignore[union-attr]
            if trial.number == 2 and not hit:
                hit.append(trial.number)
                raise KeyboardInterrupt("signal 15")  # what the SIGTERM handler raises

        return real(*args, **(kw | {"on_epoch": stop_after_first}))

    cut = tmp_path / "cut.yaml"
    cut.write_text(yaml.safe_dump(raw(tmp_path / "cut")))
    monkeypatch.setattr(harness.study.objective, "train", interrupted)
    assert main(["study", "run", "--config", str(cut)]) == 2 and hit == [2]
    assert main(["study", "run", "--config", str(cut)]) == 0
    assert _finished_params(tmp_path / "cut") == _finished_params(tmp_path / "clean")


def test_delete_is_refused_while_a_worker_of_the_study_is_alive(cub: Path, tmp_path: Path) -> None:
    from harness.study.config import load_config
    from harness.study.lifecycle import create, delete_study
    from harness.study.presence import live_workers, registered
    from harness.study.storage import owner_record

    path = study_file(cub, tmp_path)
    assert main(["data", "prepare", "--config", str(path)]) == 0
    cfg = load_config(path)
    create(cfg)
    with registered(cfg):  # a worker still loading its data: no trial running yet
        with pytest.raises(Exception, match="a worker is running .* stop it first"):
            delete_study(cfg, force=True)
    dead = cfg.study_dir / "running" / "elsewhere-1.json"
    dead.write_text(json.dumps(owner_record(-1) | {"pid": 2**22 + 7}))  # this machine, a pid that is gone
    assert live_workers(cfg) == [] and not dead.exists()
    assert delete_study(cfg, force=True).is_dir()


def test_a_worker_whose_study_was_set_aside_under_it_says_so(
    cub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race a registration cannot close: the study is set aside between the worker's start and its
    first use of the journal (here: while it loads its data)."""
    import harness.study.worker
    from harness.errors import HarnessError
    from harness.study.config import load_config
    from harness.study.worker import run_worker

    path = study_file(cub, tmp_path)
    assert main(["data", "prepare", "--config", str(path)]) == 0
    assert main(["study", "create", "--config", str(path)]) == 0
    cfg = load_config(path)
    real = harness.study.worker.prepare

    def deleted_meanwhile(*args: object, **kw: object) -> object:
        (cfg.study_dir / "optuna.journal").rename(tmp_path / "moved.journal")  # as a delete would
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(harness.study.worker, "prepare", deleted_meanwhile)
    with pytest.raises(HarnessError, match="was set aside .* nothing was lost"):
        run_worker(cfg)


def test_a_sqlite_storage_in_a_folder_that_does_not_exist_yet_is_created(cub: Path, tmp_path: Path) -> None:
    db = tmp_path / "new" / "deeper" / "optuna.db"
    path = study_file(cub, tmp_path, storage=f"sqlite:///{db}")
    assert main(["study", "run", "--config", str(path)]) == 0
    assert db.is_file()


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_new_process_does_not_replay_the_samplers_draws(
    sampler: str, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Raise the budget, resume, or open a second terminal: the next trials are new draws."""
    raw = config(data_root, tmp_path, n_trials=3, sampler={"name": sampler, "seed": 0, "n_startup_trials": 8})
    assert main(["study", "run", "--config", str(write(tmp_path, raw))]) == 0
    raw["budget"] = {"n_trials": 6}  # a raised budget: a new process continues the study
    assert main(["study", "run", "--config", str(write(tmp_path, raw))]) == 0
    assert main(["study", "worker", "--config", str(write(tmp_path, raw)), "--worker", "0"]) == 0
    drawn = params_of(study_of(tmp_path / "results"))
    assert len(drawn) == 6
    assert len(set(drawn)) == 6, "a later process re-proposed earlier parameter sets"

    # and the seed still reproduces the study: the same config in a fresh folder draws the same
    other = tmp_path / "again"
    other.mkdir()
    raw2 = raw | {"results_dir": str(other / "results"), "budget": {"n_trials": 6}}
    assert main(["study", "run", "--config", str(write(other, raw2))]) == 0
    assert params_of(study_of(other / "results")) == drawn


def test_a_torn_journal_tail_is_set_aside_and_the_study_goes_on(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw, path = finished(data_root, tmp_path, n_trials=2)
    j = journal(tmp_path / "results")
    with j.open("ab") as f:  # a crash (or a full disk) in the middle of an append
        f.write(TORN)
    raw["budget"] = {"n_trials": 3}
    assert main(["study", "run", "--config", str(write(tmp_path, raw))]) == 0
    assert "its last record was torn" in capsys.readouterr().err
    for line in j.read_bytes().splitlines():  # every record parses: nothing was appended to the tear
        json.loads(line)
    aside = list(j.parent.glob("optuna.journal.torn-*"))
    assert len(aside) == 1 and aside[0].read_bytes().endswith(TORN)
    study = study_of(tmp_path / "results")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert main(["evaluate", "--config", str(path)]) == 0
    assert main(["report", "--config", str(path)]) == 0


def test_a_journal_already_broken_by_an_append_after_a_tear_is_repaired(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What older versions left: records appended after a torn one. Completed trials stay readable."""
    raw, path = finished(data_root, tmp_path, n_trials=2)
    j = journal(tmp_path / "results")
    lines = j.read_bytes().splitlines(keepends=True)
    lines[-3] = TORN + lines[-3]  # a torn record, then whole ones appended to it
    j.write_bytes(b"".join(lines))
    with pytest.raises(json.JSONDecodeError):  # what plain Optuna makes of it
        optuna.load_study(study_name=NAME, storage=JournalStorage(JournalFileBackend(str(j)))).trials
    capsys.readouterr()
    assert main(["report", "--config", str(path)]) == 0
    _, err = capsys.readouterr()
    assert "torn" in err and "optuna.journal.torn-" in err
    study = study_of(tmp_path / "results")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2


def test_a_torn_record_followed_by_a_whole_one_at_the_end_is_not_skipped(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Plain Optuna silently skips a last line that does not parse: the trial's end would be lost."""
    raw, path = finished(data_root, tmp_path, n_trials=1)
    j = journal(tmp_path / "results")
    lines = j.read_bytes().splitlines(keepends=True)
    lines[-1] = TORN + lines[-1]  # the record that completes the trial, appended to a torn one
    j.write_bytes(b"".join(lines))
    plain = optuna.load_study(study_name=NAME, storage=JournalStorage(JournalFileBackend(str(j))))
    assert plain.trials[0].state == TrialState.RUNNING  # what plain Optuna makes of it
    capsys.readouterr()
    assert main(["report", "--config", str(path)]) == 0
    assert "torn record" in capsys.readouterr().err
    assert study_of(tmp_path / "results").trials[0].state == TrialState.COMPLETE


HOLD_THE_LOCK_AND_DIE = """
import os
import sys
from harness.study.storage import SafeJournalFileBackend
SafeJournalFileBackend("results/s/optuna.journal")._lock.acquire()
os._exit(0)  # as a SIGKILL inside an append would leave it: the lock held by no process
"""
APPEND = """
from harness.study.storage import SafeJournalFileBackend
SafeJournalFileBackend("results/s/optuna.journal", lock_grace=3).append_logs([{"op_code": 0, "x": 1}])
"""


def test_a_lock_left_by_a_killed_holder_is_taken_over_under_a_relative_path(tmp_path: Path) -> None:
    """The pipeline opens ``journal:results/<study>/optuna.journal``, relative to its folder. Optuna's
    lock there was a link that resolved against its own folder: a holder killed mid-append left a lock
    no one ever took over, and every later worker spun on it (a resumed study hung for ever)."""
    (tmp_path / "results" / "s").mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    kw = {"cwd": tmp_path, "env": env}
    held = run_group([sys.executable, "-c", HOLD_THE_LOCK_AND_DIE], timeout=patience(120), **kw)
    assert held.returncode == 0, held.stderr[-2000:]
    lock = tmp_path / "results" / "s" / "optuna.journal.lock"
    assert lock.is_symlink() and lock.exists(), "the lock must resolve to the journal (its grace reads it)"
    after = run_group([sys.executable, "-c", APPEND], timeout=patience(240), **kw)
    assert after.returncode == 0, after.stderr[-2000:]
    assert "Forcibly releasing" in after.stderr
    assert not lock.is_symlink()
    assert json.loads((tmp_path / "results" / "s" / "optuna.journal").read_text()) == {"op_code": 0, "x": 1}


def test_a_retry_never_resumes_an_earlier_incarnations_checkpoint(data_root: Path, tmp_path: Path) -> None:
    import torch

    from harness.training.checkpoint import TrialCheckpoint

    ckpt = TrialCheckpoint(tmp_path / "checkpoint.pt", uid="aaaa")
    ckpt.save({"epoch": 1, "model": {}, "history": []})
    assert TrialCheckpoint(tmp_path / "checkpoint.pt", uid="aaaa").load() is not None
    assert TrialCheckpoint(tmp_path / "checkpoint.pt", uid="bbbb").load() is None
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["uid"] == "aaaa"


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(OSError(errno.ENOSPC, "No space left on device"), id="oserror"),
        pytest.param(
            RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1536 vs 1430"),
            id="torch-save",  # how torch's zip writer reports a full disk
        ),
    ],
)
def test_a_full_disk_mid_trial_ends_the_trial_and_its_run(
    failure: BaseException,
    data_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import torch

    raw = config(data_root, tmp_path, n_trials=2, epochs=3)
    path = write(tmp_path, raw)
    real_save = torch.save
    calls = {"n": 0}

    def save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the second epoch's checkpoint hits the full disk
            raise failure
        real_save(obj, f, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "save", save)
    code = main(["study", "run", "--config", str(path)])
    msg = one_error_line(code, capsys.readouterr().err)
    assert "trial 0" in msg and "re-queued" in msg and ("space" in msg or "disk" in msg)
    study = study_of(tmp_path / "results")
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]
    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(NAME)
    runs = client.search_runs([exp.experiment_id], "tags.`harness.phase` = 'hpo'")
    assert [r.info.status for r in runs] == ["FAILED"]

    monkeypatch.setattr(torch, "save", real_save)  # space freed: the rerun resumes
    assert main(["study", "run", "--config", str(path)]) == 0
    study = study_of(tmp_path / "results")
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 2 and states[0] == TrialState.FAIL
    assert study.trials[1].user_attrs["resumed_from"] == {"trial": 0, "epoch": 1}


def test_a_crashing_trial_ends_failed_and_the_study_can_be_recreated(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import harness.study.objective

    raw = config(data_root, tmp_path, n_trials=2)
    path = write(tmp_path, raw)

    def crash(*args: object, **kwargs: object) -> None:
        raise ValueError("something the config check did not foresee")

    monkeypatch.setattr(harness.study.objective, "train", crash)
    msg = one_error_line(main(["study", "run", "--config", str(path)]), capsys.readouterr().err)
    assert "trial 0" in msg and "something the config check did not foresee" in msg
    error_file = tmp_path / "results" / NAME / "trials" / "0" / "error.txt"
    assert "Traceback" in error_file.read_text() and str(error_file) in msg
    study = study_of(tmp_path / "results")
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(NAME)
    runs = client.search_runs([exp.experiment_id], "tags.`harness.phase` = 'hpo'")
    assert [r.info.status for r in runs] == ["FAILED"]
    monkeypatch.undo()

    raw["search_space"] = raw["search_space"] | {"margin": {"low": 0.15, "high": 0.3}}  # the fix
    fixed = write(tmp_path, raw, "fixed.yaml")
    msg = one_error_line(main(["study", "run", "--config", str(fixed)]), capsys.readouterr().err)
    assert "no finished trial" in msg and f"harness study delete --config {fixed}" in msg
    assert main(["study", "delete", "--config", str(fixed)]) == 0
    attic = list((tmp_path / "results" / NAME / "attic").iterdir())
    assert len(attic) == 1 and (attic[0] / "optuna.journal").is_file()  # set aside, not lost
    assert main(["study", "run", "--config", str(fixed)]) == 0
    study = study_of(tmp_path / "results")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2


def test_delete_refuses_a_study_with_finished_trials_without_force(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw, path = finished(data_root, tmp_path, n_trials=1)
    capsys.readouterr()
    msg = one_error_line(main(["study", "delete", "--config", str(path)]), capsys.readouterr().err)
    assert "1 finished trial" in msg and "--force" in msg
    assert journal(tmp_path / "results").is_file()
    assert main(["study", "delete", "--config", str(path), "--force"]) == 0
    assert not journal(tmp_path / "results").exists()


def test_an_interrupted_trial_is_requeued_once_however_many_sweeps(data_root: Path, tmp_path: Path) -> None:
    from harness.study import parse_config
    from harness.study.sweep import INTERRUPTED, sweep

    cfg = parse_config(config(data_root, tmp_path))
    study = _memory_study()
    t = study.ask()
    t.suggest_float("margin", 0.1, 0.3)
    t.set_user_attr(INTERRUPTED, t.number)
    study.tell(t, state=TrialState.FAIL)
    legacy = study.ask()  # a FAIL of an older harness: no mark, never re-queued
    legacy.suggest_float("margin", 0.1, 0.3)
    study.tell(legacy, state=TrialState.FAIL)
    for _ in range(3):
        sweep(study, cfg)
    waiting = [x for x in study.get_trials() if x.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].system_attrs["retry_history"] == [0]
    # the retry inherits its parent's mark; killed in turn (no own mark), only the stale sweep may
    # re-queue it, never this rule
    retry = study.ask()
    assert retry.number == waiting[0].number
    study.tell(retry, state=TrialState.FAIL)
    sweep(study, cfg)
    assert not [x for x in study.get_trials() if x.state == TrialState.WAITING]


def test_storage_errors_of_an_rdb_count_as_the_machines(tmp_path: Path) -> None:
    from sqlalchemy.exc import OperationalError

    from harness.study.failures import resource_error

    try:
        try:
            raise OperationalError("INSERT", {}, Exception("database or disk is full"))
        except OperationalError as inner:
            raise optuna.exceptions.StorageInternalError(
                "An exception is raised during the commit."
            ) from inner
    except optuna.exceptions.StorageInternalError as e:
        assert resource_error(e)
    assert not resource_error(ValueError("a bad config"))


def test_a_heartbeat_on_a_full_disk_does_not_kill_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.study.storage import HeartbeatJournalStorage

    storage = HeartbeatJournalStorage(str(tmp_path / "j.journal"), 1, 4)

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "set_trial_system_attr", full)
    storage.record_heartbeat(0)  # logs, does not raise


def test_a_checkpoint_from_before_uids_still_resumes(tmp_path: Path) -> None:
    import torch

    from harness.training.checkpoint import TrialCheckpoint

    torch.save({"epoch": 2, "history": []}, tmp_path / "old.pt")
    assert TrialCheckpoint(tmp_path / "old.pt", uid="abc").load()["epoch"] == 2


def test_delete_refuses_while_a_trial_runs(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:

    from harness.study.optuna_api import trial_id
    from harness.study.storage import OWNER_ATTR, owner_record

    raw, path = finished(data_root, tmp_path, n_trials=1)
    study = study_of(tmp_path / "results")
    t = study.ask()
    t.set_user_attr(OWNER_ATTR, owner_record(trial_id(t)))  # this (live) process owns it
    assert t.user_attrs[OWNER_ATTR]["pid"] == os.getpid()
    capsys.readouterr()
    msg = one_error_line(main(["study", "delete", "--config", str(path), "--force"]), capsys.readouterr().err)
    assert "1 running trial" in msg and "stop its workers first" in msg
    assert journal(tmp_path / "results").is_file()
