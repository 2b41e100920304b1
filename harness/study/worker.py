"""Workers: run trials until the study (all workers together) has ``budget.n_trials`` finished ones.

Budget: under a study-wide lock (a lock file beside the journal; a PostgreSQL advisory lock), a
worker sweeps for dead workers, counts, and takes a trial only while finished + running trials <
``n_trials``; it waits when the rest is in flight. So parallel workers do not overshoot. Trials
of dead workers are failed by the sweep and re-queued; re-queued (WAITING) trials run first and
resume from their checkpoint.
"""

from __future__ import annotations

import logging
import math
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from harness.errors import HarnessError
from harness.progress import duration
from harness.study.config import StudyConfig
from harness.study.data import prepare, resolve_device
from harness.study.failures import WorkerStopped, describe, resource_error
from harness.study.identity import (
    budget_met,
    check_writable,
    images_met,
    images_spent,
    load_study,
    parent_run,
    settle_parent,
    study_uid,
    tracker_for,
)
from harness.study.objective import Objective
from harness.study.optuna_api import heartbeat
from harness.study.presence import registered
from harness.study.signals import Interrupted, Signals, signal_name
from harness.study.storage import BudgetLock, budget_lock
from harness.study.sweep import INTERRUPTED, StaleTrialHandler, orphans, reconcile_runs, sweep
from harness.training.trainer import cpus_available

log = logging.getLogger(__name__)
progress_log = logging.getLogger("harness.progress")


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


def run_worker(cfg: StudyConfig, worker: int = 0) -> int:
    """Run trials until the study (all workers together) has ``budget.n_trials`` finished ones."""
    try:
        return _run_worker(cfg, worker)
    except FileNotFoundError:
        journal = Path(cfg.storage_url.removeprefix("journal:"))
        if cfg.storage_url.startswith("journal:") and not journal.exists():
            raise HarnessError(
                f"study {cfg.name!r} was set aside (harness study delete) while worker {worker} started:"
                f" its journal {journal} is gone; nothing was lost (see {cfg.study_dir / 'attic'}/), and"
                " a rerun starts the study afresh"
            ) from None
        raise


def _run_worker(cfg: StudyConfig, worker: int) -> int:
    n_trials = cfg.budget.n_trials or 10**9  # None: the timeout or the images alone end the study
    study = load_study(cfg, on_stale=StaleTrialHandler(cfg))
    check_writable(cfg)
    outcome = None
    try:
        with registered(cfg), budget_lock(cfg.storage_url, cfg.name) as lock:
            return _work(cfg, worker, study, lock, n_trials)
    except (KeyboardInterrupt, Interrupted):
        outcome = "stopped"
        raise
    except Exception:
        outcome = "failed"
        raise
    finally:  # once this worker is no longer registered: the last one out says how the study stands
        settle_parent(cfg, outcome)


def _work(cfg: StudyConfig, worker: int, study: optuna.Study, lock: BudgetLock, n_trials: int) -> int:
    """The worker's work once registered and holding the budget lock's handle."""
    with lock:
        sweep(study, cfg)
    if budget_met(cfg, study) and not counts(study)[TrialState.WAITING]:
        log.info(
            "study %s already has %d finished trials (%s images processed); nothing to do",
            cfg.name,
            finished(study),
            f"{images_spent(study):,.0f}",
        )
        return 0
    device = resolve_device(cfg.device)
    prep = prepare(cfg, device)
    tracker = tracker_for(cfg)
    parent = parent_run(cfg, study, tracker)
    settle_parent(cfg)  # RUNNING (and an arm's comparison)
    reconcile_runs(study, tracker, parent)
    objective = Objective(cfg, prep, device, tracker, parent, uid=study_uid(study))
    with Signals() as signals:
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
    processes ``w * n .. w * n + n - 1``; each gets ``threads // n`` CPU threads. ``cfg`` may be an
    arm's (``--arm``). Returns the number of trials they ran."""
    n = cfg.workers_per_gpu
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
        *(["--arm", str(cfg.unit)] if cfg.arm is not None else []),
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
    signals: Signals,
) -> int:
    """Under the study's budget lock: sweep, count, and take a trial (a re-queued one first); then run
    it outside the lock. Counting and taking together is what keeps N workers from overshooting."""
    before = time.perf_counter()
    timeout = cfg.budget.timeout
    ran = 0
    max_failures = max(3, min(n_trials, 50))
    poll = min(5.0, float(cfg.fault_tolerance.heartbeat_interval))
    waited = False
    while timeout is None or time.perf_counter() - before < timeout:
        signals.check()
        with lock:
            sweep(study, cfg)
            c = counts(study)
            done = c[TrialState.COMPLETE] + c[TrialState.PRUNED]
            images_left = not images_met(cfg, study)  # met: no trial starts (one in flight may end past it)
            if (done >= n_trials or not images_left) and not c[TrialState.WAITING]:
                break
            trial = None
            if c[TrialState.WAITING] or (images_left and done + c[TrialState.RUNNING] < n_trials):
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
        _announce(cfg, study, trial, n_trials)
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


def _announce(cfg: StudyConfig, study: optuna.Study, trial: optuna.Trial, n_trials: int) -> None:
    """A console line when a trial starts: which of the budget it is, and when the study should end
    (the mean time of its finished trials, times what is left, over the trials running now)."""
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    running = sum(t.state == TrialState.RUNNING for t in trials)
    spent = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in done
        if t.datetime_complete and t.datetime_start
    ]
    left = float(n_trials - len(done))
    budget = f" of {n_trials}" if n_trials < 10**9 else ""
    images = ""
    if cfg.budget.images is not None and done:  # what is left of the images, at their pace per trial
        used = images_spent(study)
        per_trial = used / len(done)
        left = min(left, max(cfg.budget.images - used, 0.0) / per_trial if per_trial else left)
        images = f", {used:,.0f} of {cfg.budget.images:,.0f} images processed"
    eta = f"; study ETA {duration(sum(spent) / len(spent) * left / max(running, 1))}" if spent else ""
    progress_log.info(
        "%s: trial %d starts (%d%s taken, %d finished%s)%s",
        cfg.name,
        trial.number,
        len(done) + running,
        budget,
        len(done),
        images,
        eta,
    )


def _run_trial(study: optuna.Study, trial: optuna.Trial, objective: Objective, signals: Signals) -> None:
    """Run one asked trial with Optuna's heartbeat thread and tell its outcome, as ``optimize`` would:
    the heartbeat stops before the trial is told, so no beat lands on a finished trial."""
    state, value, note = TrialState.COMPLETE, None, ""
    objective.current = trial.number
    error: BaseException | None = None
    with heartbeat(study, trial):
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
        if orphans(study, cfg, number, marked=False):  # we know it was interrupted: we stopped it
            StaleTrialHandler(cfg)(study, trial)
        return number
