"""MLflow stores under concurrency and failure: first runs at once on SQLite and PostgreSQL, half-
migrated and deleted databases, a tracker killed mid-transaction, runs left running, unreachable servers."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import NAME, config, finished, study_file, study_of, write
from helpers import error_line as one_error_line
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness.cli import main
from harness.errors import ConfigError

STARTER = """
import sys, time
from pathlib import Path
from harness.study.storage import open_storage
url, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.001)
open_storage(url)
"""


HOT_JOURNAL = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("PRAGMA cache_size=1")  # dirty pages spill into the file: its journal is on disk
con.execute("BEGIN IMMEDIATE")
con.execute("UPDATE runs SET status = 'KILLED'")
print("mid-transaction", flush=True)
time.sleep(600)
"""


HARNESS = [sys.executable, "-m", "harness.cli", "--threads", "1"]


def _half_migrated(db: Path) -> None:
    """What an interrupted concurrent schema migration leaves: an alembic batch-copy table."""
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE _alembic_tmp_params (key VARCHAR(250), value VARCHAR(8000))")
    con.commit()
    con.close()


@pytest.mark.slow
def test_three_first_runs_on_a_fresh_postgresql_storage_all_open_it(tmp_path: Path) -> None:
    """Optuna creates its tables on first use; three processes at once crashed 2 of 3 with
    UniqueViolation. The harness creates them under an advisory lock."""
    from processes import PostgresServer

    with PostgresServer() as pg:
        url = pg.create_db("optuna")
        go = tmp_path / "go"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", STARTER, url, str(tmp_path / f"ready{i}"), str(go)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            for i in range(3)
        ]
        try:
            while not all((tmp_path / f"ready{i}").exists() for i in range(3)):
                assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
                time.sleep(0.05)
            go.touch()
            done = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, 9)
        assert [code for code, _ in done] == [0, 0, 0], [err[-2000:] for _, err in done]


def test_an_mlflow_run_left_running_by_a_full_disk_is_ended_by_the_next_worker(
    cub: Path, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    path = study_file(cub, tmp_path)
    assert main(["study", "run", "--config", str(path)]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], "tags.`harness.phase` = 'hpo'")
    stuck = runs[0].info.run_id
    client.update_run(stuck, status="RUNNING")  # what a worker that could not write its end leaves
    raised = yaml.safe_load(path.read_text()) | {"budget": {"n_trials": 3}}
    path.write_text(yaml.safe_dump(raised))
    assert main(["study", "worker", "--config", str(path)]) == 0
    assert client.get_run(stuck).info.status == "FINISHED"


def test_a_tracker_killed_mid_transaction_leaves_a_database_the_next_run_opens(tmp_path: Path) -> None:
    """Found by CI: snakemake killed mid-study with a worker inside an MLflow write leaves
    mlflow.db-journal (a hot journal). The schema check opened the database read-only, which cannot
    roll a hot journal back, so every rerun failed with "attempt to write a readonly database" and
    told the user to move the whole MLflow database aside."""
    import sqlite3

    from harness.tracking.mlflow_tracker import check_schema

    db = tmp_path / "mlflow.db"
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("CREATE TABLE runs (run_uuid TEXT PRIMARY KEY, status TEXT)")
        con.executemany("INSERT INTO runs VALUES (?, 'FINISHED')", [(f"{i:032x}",) for i in range(3000)])
        con.commit()
    cmd = [sys.executable, "-c", HOT_JOURNAL, str(db)]
    writer = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "mid-transaction"
    finally:
        writer.kill()
        writer.wait()
    assert (tmp_path / "mlflow.db-journal").stat().st_size > 0  # hot: its writer died holding it

    check_schema(db)  # raised HarnessError("cannot read the MLflow database ...") before
    with contextlib.closing(sqlite3.connect(db)) as con:  # rolled back: every run as committed
        counts = con.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall()
    assert counts == [("FINISHED", 3000)]
    assert sorted(p.name for p in tmp_path.iterdir() if "half-migrated" in p.name) == []


def test_a_file_tracking_uri_is_refused_at_config_time() -> None:
    from harness.study.config import parse_config

    with pytest.raises(ConfigError, match="mlflow_uri: 'file:///tmp/mlruns' is not a tracking store"):
        parse_config({"name": "x", "dataset": "cub", "mlflow_uri": "file:///tmp/mlruns"})


def test_an_unreachable_tracking_server_fails_in_seconds(cub: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = study_file(cub, tmp_path, mlflow_uri=f"http://127.0.0.1:{port}")
    t0 = time.perf_counter()
    r = subprocess.run([*HARNESS, "study", "create", "--config", str(path)], capture_output=True, text=True)
    took = time.perf_counter() - t0
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert r.returncode == 2 and len(errors) == 1 and "does not answer" in errors[0], r.stderr[-2000:]
    assert took < 120  # was 255 s of client retries (generous: the check itself takes one connect)


def test_a_deleted_mlflow_db_is_named_when_evaluate_creates_it_again(cub: Path, tmp_path: Path) -> None:
    path = study_file(cub, tmp_path, evaluate={"top_n": 1, "seeds": 1, "references": False})
    assert main(["study", "run", "--config", str(path)]) == 0
    (tmp_path / "results" / "mlflow.db").unlink()
    r = subprocess.run([*HARNESS, "evaluate", "--config", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "held no run of study tiny, which has 2 finished trials" in r.stderr


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
