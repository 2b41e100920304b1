"""Optuna storage for studies that outlive their workers.

``journal:PATH`` (the default, one machine) or any SQLAlchemy URL (``postgresql://`` for many
machines). Both detect trials whose worker died and re-queue them:

- RDB: Optuna's own heartbeat (``heartbeat_interval``, ``grace_period``).
- Journal file: the same Optuna heartbeat protocol, implemented here on top of
  ``JournalStorage``: a heartbeat is a trial system attribute; a trial is stale when its
  heartbeat is older than the grace period, or at once when its owner was a process on this host
  that no longer exists (kill -9, OOM killer, node reboot of a local run).

A stale trial is marked FAIL and handed to ``on_stale``; ``sweep.StaleTrialHandler`` re-queues it with
Optuna's ``RetryHeartbeatStaleTrialCallback`` (its retry resumes from the failed trial's
checkpoint) and closes its MLflow run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Generator, Iterator
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import FrozenTrial, TrialState

from harness.errors import HarnessError, first_line, redact_url
from harness.pglock import AdvisoryLock, advisory_lock, is_postgresql
from harness.pipeline import route_optuna_logging
from harness.study.optuna_api import BaseHeartbeat, journal_lock, journal_path, trial_id

log = logging.getLogger(__name__)
route_optuna_logging()

OPTUNA_SCHEMA_LOCK = "harness-optuna-schema"  # the advisory lock around Optuna's table creation
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


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"


class SafeJournalFileBackend(JournalFileBackend):
    """Optuna's journal file, which never appends after a torn record and repairs one it reads.

    A crash or a full disk in the middle of an append leaves a last line without its newline. Plain
    Optuna appends the next record to it, and from then on every read fails with a JSONDecodeError.
    Here, under the journal's own lock, the torn tail is copied aside (``<journal>.torn-<time>``)
    and cut off before any append. A journal already damaged that way (by another program, or an
    older harness) is repaired when read: each torn record is set aside, a whole record appended to
    it is kept, and every other record stays byte for byte where it was.

    Its lock is Optuna's symlink lock on the journal's **absolute** path. Optuna's lock is a symlink
    ``<journal>.lock`` pointing at the journal, and it takes over a lock left by a killed holder once
    the journal has not changed for ``lock_grace`` seconds, which it reads through the link. A relative
    path (``results/<study>/optuna.journal``, the pipeline's) makes a link that resolves against its
    own folder, so it dangles: the takeover never happens, and every later worker spins on the lock
    for ever after a kill that landed inside an append.
    """

    def __init__(self, file_path: str, lock_grace: int = 30) -> None:
        path = os.path.abspath(file_path)
        super().__init__(path, JournalFileSymlinkLock(path, grace_period=lock_grace))

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        text = "\n".join(json.dumps(x, separators=(",", ":")) for x in logs) + "\n"
        with journal_lock(self):
            self._cut_torn_tail()
            with open(journal_path(self), "ab") as f:
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())

    def check_tail(self) -> None:
        """Set a torn last record aside now (and say so), not at the next append. A last line that
        ends with a newline but does not parse (a whole record appended to a torn one) is silently
        skipped by Optuna's reader: it is repaired here too."""
        last = self._last_line()
        if not last or (last.endswith(b"\n") and _record(last) is not None):
            return  # the usual case: nothing to repair, nothing written (a read-only copy opens too)
        with journal_lock(self):
            self._cut_torn_tail()
            last = self._last_line()
        if last and _record(last) is None:
            self._repair(0)

    def _last_line(self) -> bytes:
        with open(journal_path(self), "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - (1 << 20)))
            tail = f.read()
        lines = tail.splitlines(keepends=True)
        return lines[-1] if lines else b""

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        number = log_number_from
        for attempt in range(2):
            try:
                for record in super().read_logs(number):
                    yield record
                    number += 1
                return
            except ValueError:  # JSONDecodeError, or Optuna's "Invalid log format."
                if attempt:
                    raise
                self._repair(number)

    def _aside(self, data: bytes) -> Path:
        path = Path(f"{journal_path(self)}.torn-{_stamp()}")
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return path

    def _cut_torn_tail(self) -> None:
        with open(journal_path(self), "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            start = size
            while start > 0:  # back to the last newline
                step = min(start, 1 << 16)
                f.seek(start - step)
                chunk = f.read(step)
                i = chunk.rfind(b"\n")
                if i >= 0:
                    start = start - step + i + 1
                    break
                start -= step
            f.seek(start)
            torn = f.read()
            aside = self._aside(torn)  # first the copy, then the cut: a failure leaves both intact
            f.truncate(start)
            f.flush()
            os.fsync(f.fileno())
        log.warning(
            "journal %s: its last record was torn (%d bytes, left by a crash or a full disk); set aside"
            " in %s, every other record is intact",
            journal_path(self),
            len(torn),
            aside,
        )

    def _repair(self, first_bad: int) -> None:
        with journal_lock(self):
            with open(journal_path(self), "rb") as f:
                lines = f.read().splitlines(keepends=True)
            kept, removed = lines[:first_bad], []
            for line in lines[first_bad:]:
                if line.endswith(b"\n") and _record(line) is not None:
                    kept.append(line)
                    continue
                removed.append(line)
                whole = _whole_suffix(line) if line.endswith(b"\n") else None
                if whole is not None:
                    kept.append(whole)
            if not removed:
                return  # another process repaired it first
            aside = self._aside(b"".join(removed))
            tmp = f"{journal_path(self)}.repair-{os.getpid()}"
            try:
                with open(tmp, "wb") as f:
                    f.write(b"".join(kept))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, journal_path(self))
            finally:
                Path(tmp).unlink(missing_ok=True)
        log.warning(
            "journal %s: %d torn record(s) found (left by a crash or a full disk); set aside in %s and"
            " the journal repaired; every whole record is kept",
            journal_path(self),
            len(removed),
            aside,
        )


def _record(line: bytes) -> dict | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) and "op_code" in value else None


def _whole_suffix(line: bytes) -> bytes | None:
    """A whole record appended to a torn one: the longest suffix of ``line`` that parses."""
    start = line.find(b"{", 1)
    while start > 0:
        if _record(line[start:]) is not None:
            return line[start:]
        start = line.find(b"{", start + 1)
    return None


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """A journal-file storage that takes part in Optuna's heartbeat protocol (see module doc)."""

    def __init__(
        self,
        path: str,
        heartbeat_interval: int,
        grace_period: int,
        on_stale: StaleCallback | None = None,
    ) -> None:
        backend = SafeJournalFileBackend(path)
        backend.check_tail()
        super().__init__(backend)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.on_stale = on_stale

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["on_stale"] = None  # callbacks hold trackers; never pickled into other processes
        return state

    def record_heartbeat(self, trial_id: int) -> None:
        """Runs in Optuna's heartbeat thread: an error there must not die as a raw traceback."""
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, [trial_id, time.time()])
        except OSError as e:  # a full disk: the trial goes on; its worker reports the disk itself
            log.warning("trial id %d: heartbeat not recorded (%s)", trial_id, e.strerror or e)
        except UpdateFinishedTrialError:  # the trial was just told, or taken over as stale
            pass

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = t.system_attrs.get(HEARTBEAT_ATTR)
            if isinstance(beat, list) and beat[0] == trial_id(t):
                last = float(beat[1])
            else:  # no beat of its own yet (a retry inherits its parent's attrs): count from the start
                start = t.datetime_start or datetime.now(timezone.utc)
                last = start.timestamp()
            if now - last > self.grace_period or owner_is_dead(t.user_attrs.get(OWNER_ATTR), trial_id(t)):
                stale.append(trial_id(t))
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
    if url.startswith("sqlite:///"):  # its folder may not exist yet (a fresh results directory)
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    schema = advisory_lock(url, OPTUNA_SCHEMA_LOCK, "Optuna storage") if is_postgresql(url) else nullcontext()
    try:
        with schema, warnings.catch_warnings():  # its tables are created once, by one process at a time
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
    except HarnessError:
        raise
    except Exception as e:
        first = first_line(e, type(e).__name__)
        raise HarnessError(
            f"cannot open Optuna storage {redact_url(url)}: {first}; check the URL, that the server is"
            " running and reachable, and that its driver is installed (pip install psycopg2-binary)"
        ) from None


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("postgresql"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    return {}


class BudgetLock:
    """Serialises "sweep, count, take a trial" across all workers of one study.

    Journal: an flock'd file beside the journal (one machine, or a file system with working
    locks); SQLite (one machine too): an flock'd file beside the database, one per study.
    PostgreSQL: a session advisory lock keyed by the study name. Other RDBs have no lock here: the
    budget may then overshoot by up to workers - 1 trials (logged once per process).
    """

    warned: ClassVar[set[str]] = set()

    def __init__(self, url: str, study: str) -> None:
        self.url, self.study = url, study
        self._file: Any = None
        self._pg: AdvisoryLock | None = None
        if url.startswith("journal:"):
            self._file = open(url.removeprefix("journal:") + ".budget.lock", "a")  # noqa: SIM115
        elif url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            path = Path(f"{url.removeprefix('sqlite:///')}.{study}.budget.lock")
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a")  # noqa: SIM115
        elif is_postgresql(url):
            self._pg = AdvisoryLock(url, f"harness-budget:{study}", "Optuna storage")
        elif url not in self.warned:
            self.warned.add(url)
            log.warning(
                "storage %s: no cross-worker lock; with several workers the budget may overshoot by"
                " workers - 1 trials",
                url.split("://", 1)[0],
            )

    def __enter__(self) -> BudgetLock:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_EX)
        elif self._pg is not None:
            self._pg.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
        elif self._pg is not None:
            self._pg.release()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._pg is not None:
            self._pg.close()  # a dead worker's connection drops, and PostgreSQL frees its lock


@contextlib.contextmanager
def budget_lock(url: str, study: str) -> Iterator[BudgetLock]:
    lock = BudgetLock(url, study)
    try:
        yield lock
    finally:
        lock.close()
