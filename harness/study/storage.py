"""Optuna storage for studies that outlive their workers.

``journal:PATH`` (the default, one machine) or any SQLAlchemy URL (``postgresql://`` for many
machines). Both detect trials whose worker died and re-queue them:

- RDB: Optuna's own heartbeat (``heartbeat_interval``, ``grace_period``).
- Journal file: the same Optuna heartbeat protocol, implemented here on top of
  ``JournalStorage``: a heartbeat is a trial system attribute; a trial is stale when its
  heartbeat is older than the grace period, or at once when its owner was a process on this host
  that no longer exists (kill -9, OOM killer, node reboot of a local run).

A stale trial is marked FAIL and handed to ``on_stale``; the runner's handler re-queues it with
Optuna's ``RetryHeartbeatStaleTrialCallback`` (its retry resumes from the failed trial's
checkpoint) and closes its MLflow run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import JournalStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from harness.errors import HarnessError

log = logging.getLogger(__name__)

HEARTBEAT_ATTR = "harness.heartbeat"  # [trial_id, unix time]
OWNER_ATTR = "harness.owner"  # {"trial_id", "host", "pid", "pid_start"}
StaleCallback = Callable[[optuna.Study, FrozenTrial], None]


def process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a live process from a recycled pid), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:  # no procfs (macOS): existence only
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return "?"
        return "?"
    fields = stat.rsplit(")", 1)[1].split()  # counted after the command name: state is field 3
    if fields[0] in ("Z", "X"):  # a zombie is dead; its parent (maybe killed too) just has not reaped it
        return None
    return fields[19]  # field 22: start time in clock ticks since boot


def _machine() -> str:
    """This kernel boot and pid namespace: two containers sharing a hostname are told apart, and so
    are two boots of one machine; pids are comparable only within the same value."""
    parts = []
    for path, read in (("/proc/sys/kernel/random/boot_id", Path.read_text), ("/proc/self/ns/pid", None)):
        try:
            parts.append(read(Path(path)).strip() if read else os.readlink(path))
        except OSError:
            parts.append("?")
    return f"{socket.gethostname()}|{'|'.join(parts)}"


def owner_record(trial_id: int) -> dict[str, Any]:
    return {
        "trial_id": trial_id,
        "host": socket.gethostname(),
        "machine": _machine(),
        "pid": os.getpid(),
        "pid_start": process_start(os.getpid()),
    }


def owner_is_dead(owner: Any, trial_id: int) -> bool:
    """True only when certain: the owner ran on this machine (same boot, same pid namespace) and that
    exact process is gone. Anything else waits for the heartbeat's grace period."""
    if not isinstance(owner, dict) or owner.get("trial_id") != trial_id:
        return False  # no record yet, or one copied from the trial this one retries
    if owner.get("machine") != _machine() or "?" in str(owner.get("machine")).split("|")[1:]:
        return False
    now = process_start(int(owner["pid"]))
    return now is None or (now != "?" and owner.get("pid_start") not in (None, "?", now))


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """A journal-file storage that takes part in Optuna's heartbeat protocol (see module doc)."""

    def __init__(
        self,
        path: str,
        heartbeat_interval: int,
        grace_period: int,
        on_stale: StaleCallback | None = None,
    ) -> None:
        super().__init__(JournalFileBackend(path))
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.on_stale = on_stale

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["on_stale"] = None  # callbacks hold trackers; never pickled into other processes
        return state

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, [trial_id, time.time()])

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = t.system_attrs.get(HEARTBEAT_ATTR)
            if isinstance(beat, list) and beat[0] == t._trial_id:
                last = float(beat[1])
            else:  # no beat of its own yet (a retry inherits its parent's attrs): count from the start
                start = t.datetime_start or datetime.now(timezone.utc)
                last = start.timestamp()
            if now - last > self.grace_period or owner_is_dead(t.user_attrs.get(OWNER_ATTR), t._trial_id):
                stale.append(t._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> StaleCallback | None:
        return self.on_stale


def open_storage(
    url: str,
    heartbeat_interval: int = 60,
    grace_period: int = 180,
    on_stale: StaleCallback | None = None,
) -> optuna.storages.BaseStorage:
    """``journal:PATH`` or an SQLAlchemy URL; both with heartbeat-based stale-trial detection."""
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return HeartbeatJournalStorage(str(path), heartbeat_interval, grace_period, on_stale)
        except OSError as e:
            raise HarnessError(
                f"cannot open the study journal {path}: {e.strerror or e}; check that the results"
                " directory exists, is writable and has free space"
            ) from None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", "Argument ``(heartbeat_interval|grace_period)``", ExperimentalWarning
            )
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=on_stale,
                engine_kwargs=_engine_kwargs(url),
            )
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HarnessError(
            f"cannot open Optuna storage {_redact(url)}: {first}; check the URL, that the server is"
            " running and reachable, and that its driver is installed (pip install psycopg2-binary)"
        ) from None


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("postgresql"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    return {}


def _redact(url: str) -> str:
    """Hide a password in error messages: scheme://user:***@host/db."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url


class BudgetLock:
    """Serialises "sweep, count, take a trial" across all workers of one study.

    Journal: an flock'd file beside the journal (one machine, or a file system with working
    locks). PostgreSQL: a session advisory lock keyed by the study name. Other RDBs have no lock
    here: the budget may then overshoot by up to workers - 1 trials (logged once).
    """

    def __init__(self, url: str, study: str) -> None:
        self.url, self.study = url, study
        self._file: Any = None
        self._conn: Any = None
        self._key = int.from_bytes(
            hashlib.sha256(f"harness-budget:{study}".encode()).digest()[:8], "big", signed=True
        )
        if url.startswith("journal:"):
            self._file = open(url.removeprefix("journal:") + ".budget.lock", "a")  # noqa: SIM115
        elif url.startswith("postgresql"):
            import psycopg2

            dsn = url.replace("postgresql+psycopg2://", "postgresql://", 1)
            self._conn = psycopg2.connect(dsn, connect_timeout=10)
            self._conn.autocommit = True
        else:
            log.warning(
                "storage %s: no cross-worker lock; the budget may overshoot by workers - 1 trials",
                url.split("://", 1)[0],
            )

    def __enter__(self) -> BudgetLock:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_EX)
        elif self._conn is not None:
            with self._conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_lock(%s)", (self._key,))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
        elif self._conn is not None:
            with self._conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (self._key,))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._conn is not None:
            self._conn.close()  # a dead worker's connection drops, and PostgreSQL frees its lock


@contextlib.contextmanager
def budget_lock(url: str, study: str) -> Iterator[BudgetLock]:
    lock = BudgetLock(url, study)
    try:
        yield lock
    finally:
        lock.close()
