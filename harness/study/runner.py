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
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
import warnings
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import FrozenTrial, TrialState

from harness.errors import HarnessError, first_line
from harness.study.config import StudyConfig, config_warnings, write_config
from harness.study.data import prepare, resolve_device
from harness.study.guard import changed_error, n_finished, refuse_changed, stored_study
from harness.study.objective import Objective
from harness.study.sampler import make_sampler
from harness.study.storage import BudgetLock, budget_lock, open_storage
from harness.tracking import Tracker
from harness.tracking.mlflow_tracker import sqlite_path
from harness.training.trainer import cpus_available

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
    dirs = [cfg.study_dir]
    if cfg.storage_url.startswith("journal:"):
        dirs.append(Path(cfg.storage_url.removeprefix("journal:")).parent)
    db = sqlite_path(cfg.tracking_uri)
    if db is not None:
        dirs.append(db.parent)  # SQLite writes its journal files beside the database
    for d in dict.fromkeys(dirs):  # the study's own folder first: the one the message names
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


def _sampler(cfg: StudyConfig) -> optuna.samplers.BaseSampler:
    """Seeded per trial number: workers, resumes and raised budgets never repeat a draw."""
    s = cfg.sampler
    return make_sampler(s["name"], int(s.get("seed", 0)), int(s.get("n_startup_trials", 8)))


def _pruner(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    p = cfg.pruner
    if p["name"] == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=int(p.get("n_startup_trials", 5)), n_warmup_steps=int(p.get("n_warmup_steps", 2))
    )


def tracker_for(cfg: StudyConfig) -> Tracker:
    return Tracker(cfg.tracking_uri, cfg.name, cfg.results / "mlartifacts")


def load_study(cfg: StudyConfig, worker: int = 0) -> optuna.Study:
    """Open an existing study; refuse it when it was created with another search space/protocol."""
    storage = storage_for(cfg)
    try:
        study = optuna.load_study(
            study_name=cfg.name, storage=storage, sampler=_sampler(cfg), pruner=_pruner(cfg)
        )
    except KeyError:
        raise HarnessError(
            f"study {cfg.name!r} does not exist in {cfg.storage_url}; run 'harness study create' first"
        ) from None
    if study.user_attrs.get("space_hash") not in (None, cfg.space_hash()):
        raise changed_error(cfg, study)
    return study


def study_uid(study: optuna.Study) -> str:
    """Identifies this incarnation of the study: a study deleted and re-created gets new MLflow runs."""
    return str(study.user_attrs.get("uid", "legacy"))


def create(cfg: StudyConfig) -> dict:
    """Create (or re-open) the study and its MLflow parent run; refuse a changed search space.

    Under the study's lock, so two first runs at once make one study with one uid and one parent run.
    """
    refuse_changed(cfg)
    check_writable(cfg)
    storage = storage_for(cfg)
    tracker = tracker_for(cfg)  # initialise the MLflow schema once, before workers start
    with budget_lock(cfg.storage_url, cfg.name) as lock, lock:
        try:  # an existing study is checked before anything is written to it
            study = optuna.load_study(
                study_name=cfg.name, storage=storage, sampler=_sampler(cfg), pruner=_pruner(cfg)
            )
        except KeyError:
            study = optuna.create_study(
                study_name=cfg.name,
                storage=storage,
                direction="maximize",
                sampler=_sampler(cfg),
                pruner=_pruner(cfg),
                load_if_exists=True,  # another process (without our lock: another RDB) may create it
            )
        stored = study.user_attrs.get("space_hash")
        if stored is not None and stored != cfg.space_hash():
            raise changed_error(cfg, study)
        if "uid" not in study.user_attrs:  # first: a crash below leaves a study that is still its own
            study.set_user_attr("uid", uuid.uuid4().hex[:12])
        if stored is None:
            manifest = _manifest(cfg)
            study.set_user_attr("config", cfg.to_dict())
            study.set_user_attr("split_hash", manifest.get("hash"))
            study.set_user_attr("dataset_files", manifest.get("dataset_files"))
            study.set_user_attr("space_hash", cfg.space_hash())  # last: the study is complete
        parent = tracker.parent_run(cfg.name, study_uid(study), cfg.to_dict())
    for w in config_warnings(cfg, _manifest(cfg)):
        log.warning("study %s: %s", cfg.name, w)
    info = {
        "study": cfg.name,
        "uid": study_uid(study),
        "storage": cfg.storage_url,
        "space_hash": cfg.space_hash(),
        "mlflow_uri": cfg.tracking_uri,
        "mlflow_parent_run_id": parent,
    }
    cfg.study_dir.mkdir(parents=True, exist_ok=True)
    (cfg.study_dir / "study.json").write_text(json.dumps(info, indent=1))
    return info


def freeze(cfg: StudyConfig, path: Path) -> None:
    """Write the frozen config the pipeline's later rules read, unless the stored study refuses it."""
    refuse_changed(cfg)
    write_config(cfg, path)


# What a study owns under results/{study}/, set aside together by ``delete``.
DERIVED = (
    "study.json",
    "split_manifest.json",
    "config.yaml",
    "trials",
    "evaluation",
    "test.csv",
    "test_runs.csv",
    "comparisons.csv",
    "test_queries.npz",
    "report",
    "workers",
)


def delete_study(cfg: StudyConfig, force: bool = False) -> Path:
    """Set a study aside so its name can be used again: nothing is lost.

    Everything derived from it moves to ``results/{study}/attic/<uid>-<time>/``, and so does its
    journal when it is the study's own (``results/{study}/optuna.journal``). A journal elsewhere, or an
    RDB storage, may hold other studies: there the trials are exported to the attic as CSV first and
    the study is deleted from the storage. Under the study's lock; refused while a worker is running
    one of its trials, and, without ``force``, for a study with finished trials.
    """
    study = stored_study(cfg)
    if study is None:
        raise HarnessError(f"study {cfg.name!r} does not exist in {cfg.storage_url}; nothing to delete")
    own_journal = cfg.storage_url == f"journal:{cfg.study_dir / 'optuna.journal'}"
    with budget_lock(cfg.storage_url, cfg.name) as lock, lock:
        sweep(study)  # a trial whose worker is gone is not "running"
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if running:
            raise HarnessError(
                f"study {cfg.name!r} has {len(running)} running trial(s) (trial {running[0].number}, ...);"
                " stop its workers first, then delete it"
            )
        n = n_finished(study)
        if n and not force:
            raise HarnessError(
                f"study {cfg.name!r} has {n} finished trial{'s' if n != 1 else ''}; to set it aside anyway"
                f" (it moves to {cfg.study_dir / 'attic'}/), run 'harness study delete --config"
                f" {cfg.command_path} --force'"
            )
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        uid = study_uid(study)
        attic = cfg.study_dir / "attic" / f"{uid}-{stamp}"
        attic.mkdir(parents=True)
        study.trials_dataframe().to_csv(attic / "trials.csv", index=False)
        if own_journal:
            journal = cfg.study_dir / "optuna.journal"
            shutil.move(str(journal), str(attic / "optuna.journal"))
        else:
            optuna.delete_study(study_name=cfg.name, storage=open_storage(cfg.storage_url))
        for name in DERIVED:
            src = cfg.study_dir / name
            if src.exists():
                shutil.move(str(src), str(attic / name))
    log.info("study %s (uid %s, %d finished trials) set aside in %s", cfg.name, uid, n, attic)
    return attic


def _manifest(cfg: StudyConfig) -> dict:
    path = cfg.study_dir / "split_manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


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


INTERRUPTED = "harness.interrupted"  # user attr: the trial stopped for a reason outside it


def sweep(study: optuna.Study, cfg: StudyConfig | None = None) -> None:
    """Fail and re-queue trials of dead workers; every worker may do this at any time, under the
    study's lock (two sweeps at once could re-queue one trial twice).

    With ``cfg``, also re-queue a trial marked interrupted (a full disk, a signal) whose own
    re-queue did not happen: its worker could not write it, or died in between."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    if cfg is None:
        return
    for t in _orphans(study, cfg):
        log.warning("trial %d was interrupted but not re-queued; re-queuing it now", t.number)
        StaleTrialHandler(cfg)(study, t)


def _orphans(
    study: optuna.Study, cfg: StudyConfig, number: int | None = None, marked: bool = True
) -> list[FrozenTrial]:
    """Interrupted FAIL trials without a retry (all, or just trial ``number``; ``marked=False``: also
    one whose mark could not be written, when the caller knows it was interrupted)."""
    trials = study.get_trials(deepcopy=False)
    # every retry lists the whole chain it continues (failed_trial names only the chain's first)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    max_retry = int(cfg.fault_tolerance["max_retry"])
    return [
        t
        for t in trials
        if (number is None or t.number == number)
        and t.state == TrialState.FAIL
        and (not marked or t.user_attrs.get(INTERRUPTED) == t.number)  # its own mark, not a parent's
        and "fail_reason" not in t.user_attrs  # diverged or crashed: a retry would fail again
        and t.number not in retried
        and len(t.system_attrs.get("retry_history", [])) < max_retry
    ]


class Interrupted(HarnessError):
    """The worker got SIGTERM (SLURM time limit, scancel) or SIGINT (Ctrl-C)."""


class WorkerStopped(Exception):
    """A trial could not go on for a reason outside it (a full disk, a vanished file): re-queue it."""

    def __init__(self, trial: int, error: BaseException) -> None:
        super().__init__(str(error))
        self.trial, self.error = trial, error


RESOURCE_WORDS = (
    "database or disk is full",
    "disk is full",
    "disk i/o error",
    "readonly database",
    "unable to open database",
    "no space",
)


def resource_error(e: BaseException) -> bool:
    """Errors of the machine, not of the trial: the same trial succeeds once they are fixed.

    Follows the chain of causes: Optuna's RDB storage wraps every database error (a full disk, a
    lost connection) in a StorageInternalError whose own text says nothing."""
    from sqlalchemy.exc import OperationalError

    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError | OperationalError | optuna.exceptions.StorageInternalError):
            return True
        if any(k in str(e).lower() for k in RESOURCE_WORDS):
            return True
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return False


def describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}{f' ({e.filename})' if e.filename else ''}"
    first = first_line(e)
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def signal_name(e: KeyboardInterrupt) -> str:
    """KeyboardInterrupt() from Ctrl-C has no text; ours carry 'signal N'."""
    text = str(e)
    if text.startswith("signal "):
        try:
            return signal.Signals(int(text.split()[1])).name
        except ValueError:
            return text
    return "SIGINT (Ctrl-C)"


class _Signals:
    """SIGTERM and SIGINT (Ctrl-C) raise KeyboardInterrupt only where that is safe (inside a trial,
    or while the worker waits); elsewhere (a sweep re-queuing another worker's trial, our own
    re-queue) the signal is held until that step is done, so no trial is ever left FAIL without its
    retry. Only the first signal counts: a second one (Ctrl-C pressed twice, SLURM's SIGTERM reaching
    both a worker group and its processes, which the group forwards) is ignored, so it cannot cut
    short the re-queue the first one started. One exception: a Ctrl-C pressed again more than
    ``FORCE_AFTER`` seconds after a first one that is still held (the worker waits on a lock another
    worker holds) stops the wait. A signal the parent process set to be ignored stays ignored."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    FORCE_AFTER = 1.0  # a forwarded copy of one Ctrl-C comes within ms; a person's second press later

    def __init__(self) -> None:
        self.interruptible = False
        self.pending: int | None = None
        self.raised = False
        self.held_at = 0.0
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for s in self.SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:
                    self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)  # None: set from C

    def _interrupt(self) -> KeyboardInterrupt:
        if self.pending == signal.SIGINT:
            return KeyboardInterrupt()  # named "SIGINT (Ctrl-C)" by signal_name
        return KeyboardInterrupt(f"signal {self.pending}")

    def _handle(self, signum: int, frame: object) -> None:
        if self.pending is None:
            self.pending, self.held_at = signum, time.monotonic()
            if self.interruptible:
                self.raised = True
                raise self._interrupt()
            return
        if not self.raised and signum == signal.SIGINT and time.monotonic() - self.held_at > self.FORCE_AFTER:
            log.warning("Ctrl-C again: stopping now, without waiting for the step in progress")
            self.raised = True
            raise self._interrupt()
        log.info("signal %d ignored: already stopping on signal %d", signum, self.pending)

    def check(self) -> None:
        if self.pending is not None:
            self.raised = True
            raise self._interrupt()


def run_worker(cfg: StudyConfig, worker: int = 0) -> int:
    """Run trials until the study (all workers together) has ``budget.n_trials`` finished ones."""
    n_trials = cfg.budget["n_trials"] or 10**9  # None: the timeout alone ends the study
    study = load_study(cfg, worker)
    check_writable(cfg)
    with budget_lock(cfg.storage_url, cfg.name) as lock:
        with lock:
            sweep(study, cfg)
        if finished(study) >= n_trials and not counts(study)[TrialState.WAITING]:
            log.info("study %s already has %d finished trials; nothing to do", cfg.name, finished(study))
            return 0
        device = resolve_device(cfg.device)
        prep = prepare(cfg, device)
        tracker = tracker_for(cfg)
        parent = tracker.parent_run(cfg.name, study_uid(study), cfg.to_dict())
        objective = Objective(cfg, prep, device, tracker, parent, uid=study_uid(study))
        with _Signals() as signals:
            try:
                return _loop(cfg, study, objective, worker, n_trials, lock, signals)
            except KeyboardInterrupt as e:
                signals.interruptible = False
                requeued = _requeue_interrupted(study, objective, cfg, lock)
                raise Interrupted(
                    f"worker {worker} stopped by {signal_name(e)}"
                    + (
                        f"; trial {requeued} is re-queued and resumes from its checkpoint"
                        if requeued is not None
                        else ""
                    )
                ) from None
            except WorkerStopped as e:
                try:
                    requeued = _requeue_interrupted(study, objective, cfg, lock)
                except Exception as again:  # the disk is still full: the next worker's sweep re-queues it
                    log.warning("trial %d: could not re-queue it now (%s)", e.trial, describe(again))
                    requeued = None
                then = (
                    f"trial {e.trial} is re-queued and resumes from its last checkpoint"
                    if requeued is not None
                    else f"the next worker re-queues trial {e.trial} and resumes it from its checkpoint"
                )
                raise HarnessError(
                    f"worker {worker} stopped in trial {e.trial}: {describe(e.error)}; check free space,"
                    f" permissions and the storage under {cfg.results}, then rerun: {then}"
                ) from None


def run_worker_group(
    cfg: StudyConfig, config_path: str | Path, worker: int = 0, threads: int | None = None
) -> int:
    """``workers_per_gpu`` worker processes on this machine's device, as one job (one Snakemake job
    or SLURM job per GPU): small trials (small images, a frozen trunk) leave a GPU mostly waiting
    for one process's host work, and several processes overlap it. Worker ``w`` of the job runs
    processes ``w * n .. w * n + n - 1``; each gets ``threads // n`` CPU threads. Returns the number
    of trials they ran."""
    n = int(cfg.workers_per_gpu)
    if n == 1:
        return run_worker(cfg, worker)
    per = max(1, (threads or cpus_available()) // n)
    cmd = [
        sys.executable,
        "-m",
        "harness.cli",
        "--threads",
        str(per),
        "study",
        "worker",
        "--config",
        str(config_path),
    ]
    procs = [subprocess.Popen([*cmd, "--worker", str(worker * n + i), "--processes", "1"]) for i in range(n)]
    log.info("worker group %d: %d processes on one device, %d threads each", worker, n, per)

    def forward(signum: int, frame: object) -> None:  # SLURM's SIGTERM reaches every process
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = (
        signal.signal(signal.SIGTERM, forward)
        if threading.current_thread() is threading.main_thread()
        else None
    )
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        forward(signal.SIGINT, None)
        codes = [p.wait() for p in procs]
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    bad = [(worker * n + i, c) for i, c in enumerate(codes) if c != 0]
    if bad:
        raise HarnessError(
            f"worker group {worker}: process(es) {', '.join(f'{w} (exit {c})' for w, c in bad)} failed; their"
            " errors are above; finished trials are kept, rerun to go on"
        )
    return finished(load_study(cfg))


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
            sweep(study, cfg)
            c = counts(study)
            done = c[TrialState.COMPLETE] + c[TrialState.PRUNED]
            if done >= n_trials and not c[TrialState.WAITING]:
                break
            trial = None
            if c[TrialState.WAITING] or done + c[TrialState.RUNNING] < n_trials:
                with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize": we
                    warnings.simplefilter("ignore")  # run the same heartbeat thread ourselves below
                    trial = study.ask()  # pops a WAITING (re-queued) trial first
        if trial is None:
            if not waited:
                log.info("worker %d: the rest of the budget is in flight; waiting for it", worker)
                waited = True
            signals.interruptible = True
            time.sleep(poll)  # a dead worker's trial comes back as WAITING after a sweep
            signals.interruptible = False
            continue
        waited = False
        _run_trial(study, trial, objective, signals)  # a signal pending since the ask stops it there
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
    """Run one asked trial with Optuna's heartbeat thread and tell its outcome, as ``optimize`` would:
    the heartbeat stops before the trial is told, so no beat lands on a finished trial."""
    state, value, note = TrialState.COMPLETE, None, ""
    objective.current = trial.number
    error: BaseException | None = None
    with get_heartbeat_thread(trial._trial_id, study._storage):
        try:
            signals.interruptible = True
            signals.check()  # a signal that came while this trial was being asked
            value = objective(trial)
        except optuna.TrialPruned as e:
            state, note = TrialState.PRUNED, str(e)
        except UpdateFinishedTrialError:
            signals.interruptible = False
            objective.current = None  # another worker failed and re-queued it: not ours to re-queue
            log.warning(
                "trial %d was failed as stale by another worker while it ran (a heartbeat older than"
                " grace_period: raise fault_tolerance.grace_period); its retry runs it again",
                trial.number,
            )
            return
        except BaseException as e:  # noqa: BLE001 (told FAIL below, then raised again)
            error = e
        finally:
            signals.interruptible = False
    if isinstance(error, KeyboardInterrupt):
        _mark_interrupted(trial)
        _tell(study, trial, TrialState.FAIL, None)
        raise error
    if isinstance(error, Exception):
        if resource_error(error):
            _mark_interrupted(trial)  # may fail too: then the trial stays RUNNING and the sweep finds it
            _tell(study, trial, TrialState.FAIL, None)
            raise WorkerStopped(trial.number, error) from error
        raise _crashed(study, trial, objective, error) from error
    if error is not None:
        raise error
    if state == TrialState.COMPLETE and (value is None or not math.isfinite(value)):
        state = TrialState.FAIL  # a diverged trial (the objective returned NaN)
    told = _tell(study, trial, state, value if state == TrialState.COMPLETE else None)
    objective.current = None
    if not told:
        return
    if state == TrialState.COMPLETE:
        log.info("Trial %d finished with value: %s and parameters: %s.", trial.number, value, trial.params)
    elif state == TrialState.PRUNED:
        log.info("Trial %d pruned. %s", trial.number, note)
    else:
        reason = study.get_trials(deepcopy=False)[trial.number].user_attrs.get("fail_reason", "see above")
        log.warning("Trial %d failed: %s", trial.number, reason)


def _mark_interrupted(trial: optuna.Trial) -> None:
    try:
        trial.set_user_attr(INTERRUPTED, trial.number)
    except Exception as e:  # a full disk: the trial stays RUNNING, and the next sweep handles it
        log.warning("trial %d: could not mark it interrupted (%s)", trial.number, describe(e))


def _crashed(study: optuna.Study, trial: optuna.Trial, objective: Objective, e: Exception) -> HarnessError:
    """A trial that raised: FAIL for good (a retry would crash the same way), traceback kept."""
    where = objective.trial_dir(trial.number) / "error.txt"
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_text("".join(traceback.format_exception(e)))
        trial.set_user_attr("fail_reason", f"crashed: {describe(e)}")
    except Exception as again:
        log.warning("trial %d: could not record the crash (%s)", trial.number, describe(again))
    _tell(study, trial, TrialState.FAIL, None)
    objective.current = None
    return HarnessError(
        f"trial {trial.number} crashed: {describe(e)} (traceback in {where}); fix the config, or report"
        " the traceback if the config is right"
    )


def _tell(study: optuna.Study, trial: optuna.Trial, state: TrialState, value: float | None) -> bool:
    try:
        study.tell(trial, value, state=state)
    except (OSError, optuna.exceptions.StorageInternalError) as e:
        log.warning("trial %d: could not record %s (%s)", trial.number, state.name, describe(e))
        return False
    except (UpdateFinishedTrialError, ValueError, RuntimeError) as e:
        log.warning(
            "trial %d: could not record %s (%s); another worker took it over", trial.number, state.name, e
        )
        return False
    return True


def _requeue_interrupted(
    study: optuna.Study, objective: Objective, cfg: StudyConfig, lock: BudgetLock
) -> int | None:
    """The trial a signal or a full disk interrupted (marked FAIL): queue its retry, under the lock
    and only if no other worker's sweep did. Its number, or None."""
    number = objective.current
    if number is None:
        return None
    with lock:
        (trial,) = [t for t in study.get_trials(deepcopy=False) if t.number == number]
        if trial.state != TrialState.FAIL or "fail_reason" in trial.user_attrs:  # finished, or diverged
            return None
        if _orphans(study, cfg, number, marked=False):  # we know it was interrupted: we stopped it
            StaleTrialHandler(cfg)(study, trial)
        return number
