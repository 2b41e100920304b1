"""MLflow logging without the global fluent state, so several workers can log side by side.

experiment = study; one parent run per study (tag ``harness.kind=study``); one nested run per
trial named by its number (tag ``harness.trial``); test-phase runs tagged ``harness.phase=test``.
Runs are found by tag before being created, so a retried trial or a rerun reuses its run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harness.errors import HarnessError, first_line, redact_url
from harness.pglock import advisory_lock, is_postgresql
from harness.pipeline import quiet_libraries
from harness.tracking.reachable import check_reachable

log = logging.getLogger(__name__)
logging.getLogger("alembic").setLevel(logging.WARNING)
if not logging.getLogger().isEnabledFor(logging.DEBUG):  # -v keeps MLflow's tracebacks
    quiet_libraries()  # MLflow installed its own stderr handler on import


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


# The PostgreSQL advisory lock every harness process takes while MLflow creates its schema.
SCHEMA_LOCK = "harness-mlflow-schema"


@contextlib.contextmanager
def schema_lock(tracking_uri: str) -> Iterator[None]:
    """One process at a time creates or migrates the schema of a tracking database.

    MLflow migrates a new database on first use; two processes doing that at once (two first runs
    in two terminals, N workers starting together) crash, and on SQLite can leave the database
    half-migrated for good. MLflow's own lock is a file in the local /tmp, which containers and the
    nodes of a cluster do not share. SQLite: a file lock beside the database. PostgreSQL: a session
    advisory lock in the database itself, freed by the server if the holder dies. Other stores
    (an MLflow server over HTTP, MySQL) are left to MLflow."""
    db = sqlite_path(tracking_uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        with open(db.with_name(db.name + ".init.lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    elif is_postgresql(tracking_uri):
        with advisory_lock(tracking_uri, SCHEMA_LOCK, "MLflow tracking store"):
            yield
    else:
        yield


def check_schema(db: Path) -> None:
    """Refuse (or, when it holds no run, set aside) a database a crashed migration left behind."""
    if not db.is_file() or db.stat().st_size == 0:
        return
    try:
        # Read-write, never created: a process killed mid-transaction (kill -9, a full disk, a node
        # lost) leaves a hot journal, which the next connection must roll back. A read-only one
        # cannot, and fails with "attempt to write a readonly database" on every later run.
        con = sqlite3.connect(f"file:{db}?mode=rw", uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            tmp = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
            if not tmp:
                return
            runs = con.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
        finally:
            con.close()
    except sqlite3.Error as e:
        raise HarnessError(
            f"cannot read the MLflow database {db} ({e}); if it is not an SQLite database or is damaged,"
            " move it aside (the Optuna study is not affected) and rerun"
        ) from None
    if runs == 0:
        aside = db.with_name(f"{db.name}.half-migrated-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(db, aside)
        log.warning(
            "MLflow database %s was half-migrated (table %s left by an interrupted schema migration) and"
            " held no runs: set aside in %s; a fresh one is created",
            db,
            ", ".join(tmp),
            aside,
        )
        return
    fixes = [
        f"ALTER TABLE {t} RENAME TO {t.removeprefix('_alembic_tmp_')}"
        if t.removeprefix("_alembic_tmp_") not in tables
        else f"DROP TABLE {t}"
        for t in tmp
    ]
    raise HarnessError(
        f"MLflow database {db} is half-migrated: table {', '.join(tmp)} was left by an interrupted schema"
        f" migration, and it holds {runs} runs; back it up, then run: sqlite3 {db} '{'; '.join(fixes)}'"
        f" && mlflow db upgrade sqlite:///{db} (or move the file aside to start a fresh MLflow database;"
        " the Optuna study is not affected)"
    )


class Tracker:
    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path) -> None:
        check_reachable(tracking_uri)
        self.created_parent = False  # set when parent_run had to create a study's parent run
        db = sqlite_path(tracking_uri)
        with schema_lock(tracking_uri):
            if db is not None:
                check_schema(db)
            self.client = MlflowClient(tracking_uri=tracking_uri)
            self.experiment_name = experiment
            try:
                exp = self.client.get_experiment_by_name(experiment)  # creates/migrates the schema
            except MlflowException as e:
                first = first_line(e, type(e).__name__)
                raise HarnessError(f"MLflow tracking store {redact_url(tracking_uri)}: {first}") from None
        self._experiment(exp, experiment, artifact_root)

    def _experiment(self, exp: Any, experiment: str, artifact_root: Path) -> None:
        if exp is None:
            artifact_root.mkdir(parents=True, exist_ok=True)
            try:
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=artifact_root.resolve().as_uri()
                )
            except Exception:  # another worker created it first
                exp = self.client.get_experiment_by_name(experiment)
                if exp is None:
                    raise
                self.experiment_id = exp.experiment_id
        else:
            self.experiment_id = exp.experiment_id

    def _find(self, filter_string: str) -> str | None:
        runs = self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1)
        return runs[0].info.run_id if runs else None

    def parent_run(self, study: str, uid: str, config: dict) -> str:
        """The study's parent run; ``uid`` tells a re-created study (new runs) from a re-opened one."""
        run_id = self.find_parent(study, uid)
        if run_id is None:
            tags = {"harness.kind": "study", "harness.study": study, "harness.uid": uid}
            run = self.client.create_run(self.experiment_id, run_name=f"study-{study}", tags=tags)
            run_id = run.info.run_id
            self.created_parent = True
            self.log_params(run_id, _flatten(config))
        return run_id

    def find_parent(self, study: str, uid: str) -> str | None:
        """The study's parent run if it exists (never creates one)."""
        return self._find(
            f"tags.`harness.kind` = 'study' and tags.`harness.study` = '{study}'"
            f" and tags.`harness.uid` = '{uid}'"
        )

    def set_status(self, run_id: str, status: str) -> None:
        """RUNNING / SCHEDULED, or a terminal status (FINISHED, KILLED, FAILED) with its end time."""
        if status in ("RUNNING", "SCHEDULED"):
            self.client.update_run(run_id, status=status)
        else:
            self.client.set_terminated(run_id, status=status)

    def trial_run(
        self,
        parent_id: str,
        number: int,
        params: dict[str, Any],
        phase: str = "hpo",
        name: str | None = None,
        extra_tags: dict[str, str] | None = None,
    ) -> str:
        """The run of trial ``number`` in ``phase``; reused (status reset) when it already exists."""
        key = f"{phase}-{number}" if name is None else name
        run_id = self._find(f"tags.`harness.key` = '{key}' and tags.`mlflow.parentRunId` = '{parent_id}'")
        tags = {
            "mlflow.parentRunId": parent_id,
            "harness.kind": "trial",
            "harness.phase": phase,
            "harness.trial": str(number),
            "harness.key": key,
            **(extra_tags or {}),
        }
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=name or str(number), tags=tags)
            run_id = run.info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
            self.set_tags(run_id, tags | {"harness.retried": "true"})
        self.log_params(run_id, params)
        return run_id

    def close_trial_run(self, parent_id: str, number: int, state: str, tags: dict[str, str]) -> str:
        """End trial ``number``'s run as ``state`` (created first if its worker died before making it)."""
        key = f"hpo-{number}"
        run_id = self._find(f"tags.`harness.key` = '{key}' and tags.`mlflow.parentRunId` = '{parent_id}'")
        if run_id is None:
            run_id = self.trial_run(parent_id, number, {})
        self.set_tags(run_id, tags)
        self.end(run_id, state)
        return run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        existing = self.client.get_run(run_id).data.params
        fresh = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        for i in range(0, len(fresh), 100):
            self.client.log_batch(run_id, params=fresh[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        ms = [
            Metric(k.replace("@", "_at_"), float(v), now, step or 0)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and math.isfinite(float(v))
        ]
        for i in range(0, len(ms), 500):
            self.client.log_batch(run_id, metrics=ms[i : i + 500])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_file(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_json(self, run_id: str, obj: Any, name: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / name
            p.write_text(json.dumps(obj, indent=1, default=str))
            self.client.log_artifact(run_id, str(p))

    def end(self, run_id: str, state: str) -> None:
        """``state``: the Optuna trial state name; MLflow status FINISHED / KILLED / FAILED."""
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED")
        self.client.set_tag(run_id, "optuna.state", state)
        self.client.set_terminated(run_id, status=status)

    def runs(self, parent_id: str, phase: str | None = None) -> list:
        """The trial runs under one parent (one incarnation of a study)."""
        f = f"tags.`harness.kind` = 'trial' and tags.`mlflow.parentRunId` = '{parent_id}'"
        f += f" and tags.`harness.phase` = '{phase}'" if phase else ""
        out: list = []
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string=f, max_results=1000, page_token=token
            )
            out.extend(page)
            token = page.token
            if not token:
                return out


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
