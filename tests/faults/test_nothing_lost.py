"""Nothing lost, nothing replayed (issue #11): each numbered defect reproduced as a test.

1. a new process must not replay the sampler's draws;
2. two first runs at once must not break ``mlflow.db``;
3. a torn last journal record must not make the study unreadable;
4. derived files of an earlier incarnation of a study must not reach its report;
5. a refused config change must not overwrite anything;
6. a full disk mid-trial ends the trial and its run in a final state, with one error line;
7. a config that crashes the first trial is caught at config time, and a study with no finished
   trial can be re-created.
"""

from __future__ import annotations

import errno
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from fixtures import make_cub
from helpers import NAME, tiny_config
from helpers import error_line as one_error_line
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from harness.cli import main
from harness.errors import ConfigError

HARNESS = [sys.executable, "-m", "harness.cli", "--threads", "1"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cub(tmp_path_factory.mktemp("cub"), per_class=4, noise=60.0)


def write(tmp: Path, raw: dict, name: str = "study.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def config(data_root: Path, tmp: Path, n_trials: int = 3, **over) -> dict:
    raw = tiny_config(data_root, tmp / "results", n_trials=n_trials)
    raw["epochs"] = 1
    raw["search_space"] = raw["search_space"] | {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}
    return raw | over


def finished(data_root: Path, tmp_path: Path, n_trials: int) -> tuple[dict, Path]:
    """A study whose ``n_trials`` trials have run; returns its config and the config's path."""
    raw = config(data_root, tmp_path, n_trials=n_trials)
    path = write(tmp_path, raw)
    assert main(["study", "run", "--config", str(path)]) == 0
    return raw, path


def journal(results: Path, name: str = NAME) -> Path:
    return results / name / "optuna.journal"


def study_of(results: Path, name: str = NAME) -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(journal(results, name))))
    return optuna.load_study(study_name=name, storage=storage)


def params_of(study: optuna.Study) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in study.get_trials(deepcopy=False)]


# --- 1. the sampler never replays -----------------------------------------------------------------


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


def test_evaluate_top_n_holds_distinct_configs(data_root: Path, tmp_path: Path) -> None:
    """With nothing searched every trial has the same params: the top-N keeps one copy."""
    raw = config(data_root, tmp_path, n_trials=3)
    raw["search_space"] = {"mining": "semihard", "batch_p": 4, "batch_k": 2, "embedding_dim": 16}
    raw["evaluate"] = {"top_n": 3, "seeds": 1, "references": False}
    path = write(tmp_path, raw)
    assert main(["study", "run", "--config", str(path)]) == 0
    assert main(["evaluate", "--config", str(path)]) == 0
    test = pd.read_csv(tmp_path / "results" / NAME / "test.csv")
    assert list(test["kind"]) == ["baseline", "top"]


# --- 2. two first runs at once ----------------------------------------------------------------------


def test_two_first_runs_at_once_leave_a_working_mlflow_db(data_root: Path, tmp_path: Path) -> None:
    raw = config(data_root, tmp_path, n_trials=2)
    path = write(tmp_path, raw)
    procs = [
        subprocess.Popen(
            [*HARNESS, "study", "run", "--config", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    db = tmp_path / "results" / "mlflow.db"
    tables = [r[0] for r in sqlite3.connect(db).execute("select name from sqlite_master where type='table'")]
    assert not [t for t in tables if t.startswith("_alembic_tmp")]
    study = study_of(tmp_path / "results")
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 2
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(NAME)
    assert len(client.search_runs([exp.experiment_id], "tags.`harness.phase` = 'hpo'")) == 2


def _half_migrated(db: Path) -> None:
    """What an interrupted concurrent schema migration leaves: an alembic batch-copy table."""
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE _alembic_tmp_params (key VARCHAR(250), value VARCHAR(8000))")
    con.commit()
    con.close()


def test_a_half_migrated_mlflow_db_without_runs_is_set_aside(data_root: Path, tmp_path: Path) -> None:
    from harness.tracking import Tracker

    db = tmp_path / "results" / "mlflow.db"
    db.parent.mkdir(parents=True)
    Tracker(f"sqlite:///{db}", "scratch", tmp_path / "art")  # a fresh, empty database
    _half_migrated(db)
    raw = config(data_root, tmp_path, n_trials=1)
    r = subprocess.run(
        [*HARNESS, "study", "run", "--config", str(write(tmp_path, raw))],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "half-migrated" in r.stderr and "set aside" in r.stderr
    assert list((tmp_path / "results").glob("mlflow.db.half-migrated-*"))


def test_a_half_migrated_mlflow_db_with_runs_is_named_with_the_way_out(
    data_root: Path, tmp_path: Path
) -> None:
    raw, path = finished(data_root, tmp_path, n_trials=1)
    db = tmp_path / "results" / "mlflow.db"
    _half_migrated(db)
    before = db.read_bytes()
    raw["budget"] = {"n_trials": 2}
    r = subprocess.run(
        [*HARNESS, "study", "run", "--config", str(write(tmp_path, raw))],
        capture_output=True,
        text=True,
        timeout=600,
    )
    msg = one_error_line(r.returncode, r.stderr)
    assert str(db) in msg and "half-migrated" in msg and "_alembic_tmp_params" in msg
    assert "mlflow db upgrade" in msg
    assert db.read_bytes() == before
    assert len(study_of(tmp_path / "results").trials) == 1


# --- 3. a torn journal tail -------------------------------------------------------------------------


TORN = b'{"op_code":5,"worker_id":"dead-worker","trial_id":1,"param_na'


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


# --- 4. an earlier incarnation's files --------------------------------------------------------------


def test_the_report_drops_files_of_an_earlier_incarnation(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = config(data_root, tmp_path, n_trials=2)
    raw["evaluate"] = {"top_n": 1, "seeds": 1}
    path = write(tmp_path, raw)
    for argv in (["study", "run"], ["evaluate"]):
        assert main([*argv, "--config", str(path)]) == 0
    study_dir = tmp_path / "results" / NAME
    old = pd.read_csv(study_dir / "test.csv")
    (study_dir / "optuna.journal").unlink()  # the user deletes the journal and starts over
    raw["search_space"] = raw["search_space"] | {"mining": {"choices": ["batch-hard"]}}
    path = write(tmp_path, raw)
    assert main(["study", "run", "--config", str(path)]) == 0
    capsys.readouterr()
    assert main(["report", "--config", str(path)]) == 0
    page = (study_dir / "report" / "index.html").read_text()
    assert "earlier incarnation" in page
    assert old["config"].iloc[1] not in page.split("<h2>Search</h2>")[0]  # no stale headline
    assert "No final evaluation" in page
    assert not (study_dir / "report" / "tables" / "test.csv").exists()


def test_a_retry_never_resumes_an_earlier_incarnations_checkpoint(data_root: Path, tmp_path: Path) -> None:
    import torch

    from harness.training.checkpoint import TrialCheckpoint

    ckpt = TrialCheckpoint(tmp_path / "checkpoint.pt", uid="aaaa")
    ckpt.save({"epoch": 1, "model": {}, "history": []})
    assert TrialCheckpoint(tmp_path / "checkpoint.pt", uid="aaaa").load() is not None
    assert TrialCheckpoint(tmp_path / "checkpoint.pt", uid="bbbb").load() is None
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["uid"] == "aaaa"


# --- 5. a refused change writes nothing -------------------------------------------------------------


def _stored(results: Path) -> dict[str, bytes]:
    return {str(p.relative_to(results)): p.read_bytes() for p in sorted(results.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command", [["study", "run"], ["data", "prepare"], ["study", "create"]])
def test_a_refused_config_change_writes_nothing(
    command: list[str], data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw, path = finished(data_root, tmp_path, n_trials=2)
    before = _stored(tmp_path / "results")
    changed = write(tmp_path, raw | {"val_fraction": 0.4}, "changed.yaml")
    capsys.readouterr()
    code = main([*command, "--config", str(changed)])
    msg = one_error_line(code, capsys.readouterr().err)
    assert "val_fraction" in msg and "0.2" in msg and "0.4" in msg  # what differs, stored vs config
    assert _stored(tmp_path / "results") == before
    assert main(["evaluate", "--config", str(path)]) == 0


def test_snakemake_freeze_refuses_a_changed_config_before_writing(data_root: Path, tmp_path: Path) -> None:
    from harness.study import parse_config
    from harness.study.lifecycle import freeze

    raw, path = finished(data_root, tmp_path, n_trials=1)
    frozen = tmp_path / "results" / NAME / "config.yaml"
    freeze(parse_config(raw), frozen)
    before = frozen.read_bytes()
    with pytest.raises(ConfigError, match="val_fraction: stored 0.2, this config 0.4"):
        freeze(parse_config(raw | {"val_fraction": 0.4}), frozen)
    assert frozen.read_bytes() == before


def test_an_overwritten_manifest_is_named_with_the_command_that_fixes_it(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw, path = finished(data_root, tmp_path, n_trials=1)
    manifest = tmp_path / "results" / NAME / "split_manifest.json"
    m = json.loads(manifest.read_text())
    m["classes"]["val"], m["hash"] = m["classes"]["val"][:-1], "0123456789abcdef"
    manifest.write_text(json.dumps(m))
    capsys.readouterr()
    msg = one_error_line(main(["evaluate", "--config", str(path)]), capsys.readouterr().err)
    assert str(manifest) in msg and "0123456789abcdef" in msg and "harness data prepare --config" in msg


def test_evaluate_refuses_another_copy_of_the_dataset(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw, path = finished(data_root, tmp_path, n_trials=1)
    other = make_cub(tmp_path / "other", per_class=4, noise=60.0, seed=7)  # same ids, other images
    raw["data_root"] = str(other)
    capsys.readouterr()
    msg = one_error_line(main(["evaluate", "--config", str(write(tmp_path, raw))]), capsys.readouterr().err)
    assert "dataset" in msg and str(other) in msg and "fingerprint" in msg


# --- 6. a full disk in mid-trial ---------------------------------------------------------------------


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


# --- 7. a config that crashes the first trial --------------------------------------------------------


@pytest.mark.parametrize(
    "space, words",
    [
        ({"lr": {"low": 0.0, "high": 1e-3, "log": True}}, ["search_space.lr", "log", "> 0"]),
        ({"margin": {"low": 0.0, "high": 0.3}}, ["search_space.margin", "> 0"]),
        ({"margin": -0.1}, ["search_space.margin", "> 0"]),
        ({"lr": {"low": 1e-4, "high": 1e-2, "log": True, "step": 1e-4}}, ["search_space.lr", "step", "log"]),
        ({"weight_decay": -1.0e-4}, ["search_space.weight_decay", ">= 0"]),
        ({"lr": 0.0}, ["search_space.lr", "> 0"]),
    ],
)
def test_values_that_would_crash_a_trial_are_rejected_at_config_time(
    space: dict, words: list[str], data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = config(data_root, tmp_path)
    raw["search_space"] = raw["search_space"] | space
    msg = one_error_line(
        main(["study", "run", "--config", str(write(tmp_path, raw))]), capsys.readouterr().err
    )
    for w in words:
        assert w in msg, msg
    assert not (tmp_path / "results").exists()


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


def test_config_errors_come_before_heavy_imports(tmp_path: Path) -> None:
    bad = write(tmp_path, {"name": "x", "dataset": "cub", "search_space": {"margin": -1.0}})
    code = (
        "import sys, time; t = time.perf_counter(); from harness.cli import main;"
        f" rc = main(['study', 'run', '--config', {str(bad)!r}]);"
        " print(rc, 'torch' in sys.modules, 'optuna' in sys.modules, 'mlflow' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["2", "False", "False", "False"], r.stdout + r.stderr


# --- review findings: races and edge cases -----------------------------------------------------------


def _memory_study() -> optuna.Study:
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="maximize")
    return study


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


def test_the_report_reads_a_numeric_looking_uid_as_text(tmp_path: Path) -> None:
    from harness.report.tables import this_incarnation

    path = tmp_path / "test.csv"
    pd.DataFrame({"config": ["a"], "study_uid": ["012e45678901"]}).to_csv(path, index=False)
    notes: list[str] = []
    assert this_incarnation(path, "012e45678901", notes) is not None and not notes


def test_a_checkpoint_from_before_uids_still_resumes(tmp_path: Path) -> None:
    import torch

    from harness.training.checkpoint import TrialCheckpoint

    torch.save({"epoch": 2, "history": []}, tmp_path / "old.pt")
    assert TrialCheckpoint(tmp_path / "old.pt", uid="abc").load()["epoch"] == 2


def test_an_evaluation_result_is_named_by_what_ran_not_by_its_rank(tmp_path: Path) -> None:
    from harness.params import TrialParams
    from harness.study.final import Evaluator, Unit

    ev = object.__new__(Evaluator)
    ev.uid, ev.split, ev.dir = "u1", "s1", tmp_path
    p = TrialParams(0.2, 8, 4, "cosine", "semihard", 1e-4, 128)
    first = Unit("top1-s0", "trial 7", "top", 1, 7, 7, 0.5, p, 8, 0)
    later = Unit("top2-s0", "trial 7", "top", 2, 7, 7, 0.5, p, 8, 0)  # a better trial came in
    assert ev.path(first) == ev.path(later)
    ev._store(first, {"test_recall@1": 0.3, "rank": 1}, {"recall@1": np.ones(3)})
    row, q = ev.stored(later)
    assert row["rank"] == 2 and row["test_recall@1"] == 0.3 and q["recall@1"].shape == (3,)
    ev.path(first).write_bytes(b"PK\x03\x04 cut short")  # damaged: run it again, do not crash
    assert ev.stored(first) is None


def test_study_run_refuses_another_copy_of_the_data_before_writing(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = config(data_root, tmp_path, n_trials=1)
    assert main(["study", "run", "--config", str(write(tmp_path, raw))]) == 0
    manifest = tmp_path / "results" / NAME / "split_manifest.json"
    before = manifest.read_bytes()
    other = make_cub(tmp_path / "other", per_class=4, noise=60.0, seed=7)
    capsys.readouterr()
    raw = raw | {"data_root": str(other), "budget": {"n_trials": 2}}
    msg = one_error_line(
        main(["study", "run", "--config", str(write(tmp_path, raw))]), capsys.readouterr().err
    )
    assert "not the one study" in msg and "left as it was" in msg
    assert manifest.read_bytes() == before


def test_delete_refuses_while_a_trial_runs(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

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
