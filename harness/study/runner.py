"""Create a study once, then run workers that share its storage until the budget is met.

Budget: under a study-wide lock (a lock file beside the journal; a PostgreSQL advisory lock), a
worker sweeps for dead workers, counts, and takes a trial only while finished + running trials <
``n_trials``; it waits when the rest is in flight. So parallel workers do not overshoot. Trials
of dead workers are failed by the sweep and re-queued; re-queued (WAITING) trials run first and
resume from their checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import tempfile
import threading
import time
import uuid
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import FrozenTrial, TrialState

from harness.errors import ConfigError, HarnessError
from harness.study.config import StudyConfig
from harness.study.data import prepare, resolve_device
from harness.study.objective import Objective
from harness.study.storage import BudgetLock, budget_lock, open_storage
from harness.tracking import Tracker

log = logging.getLogger(__name__)


class StaleTrialHandler:
    """A trial whose worker died: re-queue it (Optuna's retry callback) and close its MLflow run."""

    def __init__(self, cfg: StudyConfig) -> None:
        self.cfg = cfg
        with warnings.catch_warnings():  # experimental since Optuna 2.8 and unchanged since
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = RetryHeartbeatStaleTrialCallback(max_retry=int(cfg.fault_tolerance["max_retry"]))

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        history = trial.system_attrs.get("retry_history", [])
        if len(history) >= int(self.cfg.fault_tolerance["max_retry"]):
            log.warning(
                "trial %d: its worker stopped; retried %d times already, not again",
                trial.number,
                len(history),
            )
        else:
            log.warning(
                "trial %d: its worker stopped; marked FAIL and re-queued to resume from its checkpoint",
                trial.number,
            )
        self.retry(study, trial)
        try:
            tracker = tracker_for(self.cfg)
            parent = tracker.parent_run(self.cfg.name, study_uid(study), self.cfg.to_dict())
            tracker.close_trial_run(parent, trial.number, "FAIL", {"harness.fail_reason": "worker stopped"})
        except Exception as e:  # the study must go on even when MLflow is unreachable
            log.warning("trial %d: could not close its MLflow run: %s", trial.number, e)


def check_writable(cfg: StudyConfig) -> None:
    """Fail before the first trial, not in the middle of one, when results cannot be written."""
    dirs = {cfg.study_dir}
    if cfg.storage_url.startswith("journal:"):
        dirs.add(Path(cfg.storage_url.removeprefix("journal:")).parent)
    for d in sorted(dirs):
        try:
            d.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=d, prefix=".write-probe-"):
                pass
        except OSError as e:
            raise HarnessError(
                f"cannot write to {d}: {e.strerror or e}; make the results directory writable and check"
                " it has free space (results_dir in the study config moves it)"
            ) from None


def storage_for(cfg: StudyConfig) -> optuna.storages.BaseStorage:
    ft = cfg.fault_tolerance
    return open_storage(
        cfg.storage_url, int(ft["heartbeat_interval"]), int(ft["grace_period"]), StaleTrialHandler(cfg)
    )


def _sampler(cfg: StudyConfig, worker: int) -> optuna.samplers.BaseSampler:
    s = cfg.sampler
    seed = int(s.get("seed", 0)) + worker  # distinct streams per worker, reproducible per worker
    if s["name"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=int(s.get("n_startup_trials", 8)))


def _pruner(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    p = cfg.pruner
    if p["name"] == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=int(p.get("n_startup_trials", 5)), n_warmup_steps=int(p.get("n_warmup_steps", 2))
    )


def tracker_for(cfg: StudyConfig) -> Tracker:
    return Tracker(cfg.tracking_uri, cfg.name, cfg.results / "mlartifacts")


def _changed(cfg: StudyConfig) -> ConfigError:
    return ConfigError(
        f"study {cfg.name!r} already exists in {cfg.storage_url} with a different search space or"
        " protocol; rename the study (name:) or delete its storage"
    )


def load_study(cfg: StudyConfig, worker: int = 0) -> optuna.Study:
    """Open an existing study; refuse it when it was created with another search space/protocol."""
    storage = storage_for(cfg)
    try:
        study = optuna.load_study(
            study_name=cfg.name, storage=storage, sampler=_sampler(cfg, worker), pruner=_pruner(cfg)
        )
    except KeyError:
        raise HarnessError(
            f"study {cfg.name!r} does not exist in {cfg.storage_url}; run 'harness study create' first"
        ) from None
    if study.user_attrs.get("space_hash") not in (None, cfg.space_hash()):
        raise _changed(cfg)
    return study


def study_uid(study: optuna.Study) -> str:
    """Identifies this incarnation of the study: a study deleted and re-created gets new MLflow runs."""
    return str(study.user_attrs.get("uid", "legacy"))


def create(cfg: StudyConfig) -> dict:
    """Create (or re-open) the study and its MLflow parent run; refuse a changed search space."""
    check_writable(cfg)
    storage = storage_for(cfg)
    try:  # an existing study is checked before anything is written to it
        study = optuna.load_study(
            study_name=cfg.name, storage=storage, sampler=_sampler(cfg, 0), pruner=_pruner(cfg)
        )
    except KeyError:
        study = optuna.create_study(
            study_name=cfg.name,
            storage=storage,
            direction="maximize",
            sampler=_sampler(cfg, 0),
            pruner=_pruner(cfg),
            load_if_exists=True,  # another process may create it between our load and create
        )
    stored = study.user_attrs.get("space_hash")
    if stored is None:
        study.set_user_attr("space_hash", cfg.space_hash())
        study.set_user_attr("uid", uuid.uuid4().hex[:12])
        study.set_user_attr("config", cfg.to_dict())
        study.set_user_attr("split_hash", _manifest_hash(cfg))
    elif stored != cfg.space_hash():
        raise _changed(cfg)
    tracker = tracker_for(cfg)  # initialise the MLflow schema once, before workers start
    parent = tracker.parent_run(cfg.name, study_uid(study), cfg.to_dict())
    info = {
        "study": cfg.name,
        "storage": cfg.storage_url,
        "space_hash": cfg.space_hash(),
        "mlflow_uri": cfg.tracking_uri,
        "mlflow_parent_run_id": parent,
    }
    cfg.study_dir.mkdir(parents=True, exist_ok=True)
    (cfg.study_dir / "study.json").write_text(json.dumps(info, indent=1))
    return info


def _manifest_hash(cfg: StudyConfig) -> str | None:
    path = cfg.study_dir / "split_manifest.json"
    return json.loads(path.read_text())["hash"] if path.is_file() else None


def counts(study: optuna.Study) -> Counter:
    return Counter(t.state for t in study.get_trials(deepcopy=False))


def finished(study: optuna.Study) -> int:
    """Trials that count toward the budget."""
    c = counts(study)
    return c[TrialState.COMPLETE] + c[TrialState.PRUNED]


def diverged(study: optuna.Study) -> list[FrozenTrial]:
    """FAIL trials that failed by themselves (NaN loss), not because their worker died."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if "fail_reason" in t.user_attrs
    ]


def sweep(study: optuna.Study) -> None:
    """Fail and re-queue trials of dead workers; every worker may do this at any time."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


class Interrupted(HarnessError):
    """The worker got SIGTERM (SLURM time limit, scancel)."""


class _Signals:
    """SIGTERM raises KeyboardInterrupt only where that is safe (inside a trial, or while the worker
    waits); elsewhere (a sweep re-queuing another worker's trial, our own re-queue) it is held until
    that step is done, so no trial is ever left FAIL without its retry."""

    def __init__(self) -> None:
        self.interruptible = False
        self.pending: int | None = None
        self.previous: Any = None

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    def _handle(self, signum: int, frame: object) -> None:
        self.pending = signum
        if self.interruptible:
            raise KeyboardInterrupt(f"signal {signum}")

    def check(self) -> None:
        if self.pending is not None:
            raise KeyboardInterrupt(f"signal {self.pending}")


def run_worker(cfg: StudyConfig, worker: int = 0) -> int:
    """Run trials until the study (all workers together) has ``budget.n_trials`` finished ones."""
    n_trials = cfg.budget["n_trials"] or 10**9  # None: the timeout alone ends the study
    study = load_study(cfg, worker)
    check_writable(cfg)
    sweep(study)
    if finished(study) >= n_trials:
        log.info("study %s already has %d finished trials; nothing to do", cfg.name, finished(study))
        return 0
    device = resolve_device(cfg.device)
    prep = prepare(cfg, device)
    tracker = tracker_for(cfg)
    parent = tracker.parent_run(cfg.name, study_uid(study), cfg.to_dict())
    objective = Objective(cfg, prep, device, tracker, parent)
    with _Signals() as signals, budget_lock(cfg.storage_url, cfg.name) as lock:
        try:
            return _loop(cfg, study, objective, worker, n_trials, lock, signals)
        except KeyboardInterrupt as e:
            signals.interruptible = False
            requeued = _requeue_interrupted(study, objective, cfg)
            raise Interrupted(
                f"worker {worker} stopped by {e or 'an interrupt'}"
                + (
                    f"; trial {requeued} is re-queued and resumes from its checkpoint"
                    if requeued is not None
                    else ""
                )
            ) from None


def _loop(
    cfg: StudyConfig,
    study: optuna.Study,
    objective: Objective,
    worker: int,
    n_trials: int,
    lock: BudgetLock,
    signals: _Signals,
) -> int:
    """Under the study's budget lock: sweep, count, and take a trial (a re-queued one first); then run
    it outside the lock. Counting and taking together is what keeps N workers from overshooting."""
    before = time.perf_counter()
    timeout = cfg.budget.get("timeout")
    ran = 0
    max_failures = max(3, min(n_trials, 50))
    poll = min(5.0, float(cfg.fault_tolerance["heartbeat_interval"]))
    waited = False
    while timeout is None or time.perf_counter() - before < timeout:
        signals.check()
        with lock:
            sweep(study)
            c = counts(study)
            done = c[TrialState.COMPLETE] + c[TrialState.PRUNED]
            if done >= n_trials and not c[TrialState.WAITING]:
                break
            trial = None
            if c[TrialState.WAITING] or done + c[TrialState.RUNNING] < n_trials:
                with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize": we
                    warnings.simplefilter("ignore")  # run the same heartbeat thread ourselves below
                    trial = study.ask()  # pops a WAITING (re-queued) trial first
        signals.check()
        if trial is None:
            if not waited:
                log.info("worker %d: the rest of the budget is in flight; waiting for it", worker)
                waited = True
            signals.interruptible = True
            time.sleep(poll)  # a dead worker's trial comes back as WAITING after a sweep
            signals.interruptible = False
            continue
        waited = False
        _run_trial(study, trial, objective, signals)
        ran += 1
        fails = diverged(study)
        if len(fails) >= max_failures:  # a config that always fails must not loop forever
            reason = fails[-1].user_attrs.get("fail_reason", "see the worker log")
            raise HarnessError(
                f"study {cfg.name!r}: {len(fails)} trials failed (last: {reason}); fix the search space"
            )
    log.info("worker %d ran %d trials in %.1f s", worker, ran, time.perf_counter() - before)
    return ran


def _run_trial(study: optuna.Study, trial: optuna.Trial, objective: Objective, signals: _Signals) -> None:
    """Run one asked trial with Optuna's heartbeat thread and tell its outcome, as ``optimize`` would."""
    state, value, note = TrialState.COMPLETE, None, ""
    with get_heartbeat_thread(trial._trial_id, study._storage):
        try:
            signals.interruptible = True
            value = objective(trial)
            signals.interruptible = False
        except optuna.TrialPruned as e:
            signals.interruptible = False
            state, note = TrialState.PRUNED, str(e)
        except UpdateFinishedTrialError:
            signals.interruptible = False
            log.warning(
                "trial %d was failed as stale by another worker while it ran (a heartbeat older than"
                " grace_period: raise fault_tolerance.grace_period); its retry runs it again",
                trial.number,
            )
            return
        except BaseException:
            signals.interruptible = False
            _tell(study, trial, TrialState.FAIL, None)
            raise
    if state == TrialState.COMPLETE and (value is None or not math.isfinite(value)):
        state = TrialState.FAIL  # a diverged trial (the objective returned NaN)
    told = _tell(study, trial, state, value if state == TrialState.COMPLETE else None)
    if not told:
        return
    if state == TrialState.COMPLETE:
        log.info("Trial %d finished with value: %s and parameters: %s.", trial.number, value, trial.params)
    elif state == TrialState.PRUNED:
        log.info("Trial %d pruned. %s", trial.number, note)
    else:
        reason = study.get_trials(deepcopy=False)[trial.number].user_attrs.get("fail_reason", "see above")
        log.warning("Trial %d failed: %s", trial.number, reason)


def _tell(study: optuna.Study, trial: optuna.Trial, state: TrialState, value: float | None) -> bool:
    try:
        study.tell(trial, value, state=state)
    except (UpdateFinishedTrialError, ValueError, RuntimeError) as e:
        log.warning(
            "trial %d: could not record %s (%s); another worker took it over", trial.number, state.name, e
        )
        return False
    return True


def _requeue_interrupted(study: optuna.Study, objective: Objective, cfg: StudyConfig) -> int | None:
    """The trial a signal interrupted (marked FAIL): queue its retry. Its number, or None."""
    number = objective.current
    if number is None:
        return None
    trial = study.get_trials(deepcopy=False)[number]
    if trial.state != TrialState.FAIL or "fail_reason" in trial.user_attrs:  # finished, or diverged
        return None
    StaleTrialHandler(cfg)(study, trial)
    return number
