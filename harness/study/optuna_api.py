"""Every use of Optuna's private API, in one place, with the versions it was tested on.

The harness runs Optuna's heartbeat protocol on its own journal storage, runs trials with
``ask``/``tell`` under its own budget lock instead of ``optimize``, and repairs torn journal records
under the journal's own lock, and hashes Hyperband's brackets from a trial's draw index instead of
its number. For that it needs a few names Optuna does not export. Optuna may move
or rename them in any release: ``tests/study/test_optuna_api.py`` imports every one of them and fails,
naming the missing ones, when an upgrade breaks one (``harness smoke`` checks them too).

Tested with Optuna ``TESTED`` (see pyproject.toml's pin).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat, BaseHeartbeatThread, get_heartbeat_thread
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import get_lock_file
from optuna.trial import FrozenTrial

TESTED = ">=5.0,<5.2"

# System attributes Optuna's RetryHeartbeatStaleTrialCallback writes on a retried trial.
FAILED_TRIAL = "failed_trial"  # the number of the first trial of its retry chain
RETRY_HISTORY = "retry_history"  # every trial number of the chain it continues

__all__ = [
    "FAILED_TRIAL",
    "RETRY_HISTORY",
    "TESTED",
    "BaseHeartbeat",
    "KeyedHyperbandPruner",
    "heartbeat",
    "journal_lock",
    "journal_path",
    "missing",
    "storage_of",
    "system_attrs",
    "trial_id",
]


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (its number is per study; storages key by id)."""
    return int(trial._trial_id)


def storage_of(study: optuna.Study) -> BaseStorage:
    return study._storage


def system_attrs(trial: optuna.Trial) -> dict[str, Any]:
    """A running trial's system attributes (retries inherit their original's), read from storage."""
    return dict(trial.storage.get_trial_system_attrs(trial_id(trial)))


def heartbeat(study: optuna.Study, trial: optuna.Trial) -> BaseHeartbeatThread:
    """Optuna's heartbeat thread for one trial, as ``optimize`` runs it."""
    return get_heartbeat_thread(trial_id(trial), storage_of(study))


@contextlib.contextmanager
def journal_lock(backend: JournalFileBackend) -> Iterator[None]:
    """The journal file's own lock (the one Optuna takes for every append)."""
    with get_lock_file(backend._lock):
        yield


def journal_path(backend: JournalFileBackend) -> str:
    return str(backend._file_path)


class KeyedHyperbandPruner(optuna.pruners.HyperbandPruner):
    """Optuna's Hyperband with each trial's bracket hashed from a key instead of its trial number.

    Optuna picks a trial's bracket from ``crc32(study name, trial number)``; a bracket's competitors,
    and the history TPE samples from under Hyperband, are the trials whose numbers hash to it. A
    retry of an interrupted trial takes a new number, so it would land in another bracket than its
    original and shift every bracket after it. ``keys(trials)`` gives each trial number its key (the
    harness: the draw index, which a retry shares with its original), or None for a trial that is in
    no bracket (an original that a retry supersedes). Read afresh at each ``prune`` and for any
    trial number not seen yet (a new trial: TPE asks for its bracket before it is pruned)."""

    def __init__(self, keys: Callable[[list[FrozenTrial]], dict[int, int | None]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._keys_of = keys
        self._keys: dict[int, int | None] = {}

    def _refresh(self, study: optuna.Study) -> None:
        # the storage's own list: the bracket study Optuna passes here filters through this method
        self._keys = self._keys_of(study._storage.get_all_trials(study._study_id, deepcopy=False))

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        self._refresh(study)
        return super().prune(study, trial)

    def _get_bracket_id(self, study: optuna.Study, trial: FrozenTrial) -> int:
        if trial.number not in self._keys:
            self._refresh(study)
        key = self._keys.get(trial.number, trial.number)
        if key is None:
            return -1  # in no bracket: never a competitor
        return int(super()._get_bracket_id(study, types.SimpleNamespace(number=key)))  # type: ignore[arg-type]


def missing() -> list[str]:
    """The private names this module relies on that the installed Optuna lacks (empty: all there),
    looked up on real objects: an in-memory study, one asked trial and a journal file backend."""
    import tempfile
    from pathlib import Path

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
        trial = study.ask()
        frozen = study.trials[0]
    finally:
        optuna.logging.set_verbosity(verbosity)
    with tempfile.TemporaryDirectory() as d:
        backend = JournalFileBackend(str(Path(d) / "probe.journal"))
        objects = {
            "Trial._trial_id": (trial, "_trial_id"),
            "Trial.storage": (trial, "storage"),
            "FrozenTrial._trial_id": (frozen, "_trial_id"),
            "Study._storage": (study, "_storage"),
            "Study._study_id": (study, "_study_id"),
            "JournalFileBackend._lock": (backend, "_lock"),
            "JournalFileBackend._file_path": (backend, "_file_path"),
        }
        out = [name for name, (obj, attr) in objects.items() if not hasattr(obj, attr)]
    for name in ("get_heartbeat_interval", "get_heartbeat_stale_trial_callback", "record_heartbeat"):
        if not hasattr(BaseHeartbeat, name):
            out.append(f"BaseHeartbeat.{name}")
    if not hasattr(optuna.pruners.HyperbandPruner, "_get_bracket_id"):
        out.append("HyperbandPruner._get_bracket_id")
    return out
