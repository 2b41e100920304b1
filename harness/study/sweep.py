"""The sweep of dead workers: a RUNNING trial whose worker is gone is failed and re-queued.

Any worker may sweep at any time, under the study's lock (two sweeps at once could re-queue one
trial twice). A stale trial (its heartbeat older than the grace period, or its owner process gone
on this machine) is marked FAIL by Optuna and handed to ``StaleTrialHandler``, which re-queues it
with Optuna's ``RetryHeartbeatStaleTrialCallback`` (its retry resumes from the failed trial's
checkpoint) and closes its MLflow run.
"""

from __future__ import annotations

import logging
import warnings

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from harness.study.config import StudyConfig
from harness.study.identity import study_uid, tracker_for
from harness.study.optuna_api import RETRY_HISTORY
from harness.study.pruning import superseded_of
from harness.tracking import Tracker

log = logging.getLogger(__name__)
INTERRUPTED = "harness.interrupted"  # user attr: the trial stopped for a reason outside it


class StaleTrialHandler:
    """A trial whose worker died: re-queue it (Optuna's retry callback) and close its MLflow run."""

    def __init__(self, cfg: StudyConfig) -> None:
        self.cfg = cfg
        with warnings.catch_warnings():  # experimental since Optuna 2.8 and unchanged since
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = RetryHeartbeatStaleTrialCallback(max_retry=cfg.fault_tolerance.max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        history = trial.system_attrs.get(RETRY_HISTORY, [])
        if len(history) >= self.cfg.fault_tolerance.max_retry:
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


def sweep(study: optuna.Study, cfg: StudyConfig | None = None) -> None:
    """Fail and re-queue trials of dead workers. With ``cfg``, also re-queue a trial marked
    interrupted (a full disk, a signal) whose own re-queue did not happen: its worker could not
    write it, or died in between."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    if cfg is None:
        return
    for t in orphans(study, cfg):
        log.warning("trial %d was interrupted but not re-queued; re-queuing it now", t.number)
        StaleTrialHandler(cfg)(study, t)


def orphans(
    study: optuna.Study, cfg: StudyConfig, number: int | None = None, marked: bool = True
) -> list[FrozenTrial]:
    """Interrupted FAIL trials without a retry (all, or just trial ``number``; ``marked=False``: also
    one whose mark could not be written, when the caller knows it was interrupted)."""
    trials = study.get_trials(deepcopy=False)
    # every retry lists the whole chain it continues (failed_trial names only the chain's first)
    retried = superseded_of(trials)
    max_retry = cfg.fault_tolerance.max_retry
    return [
        t
        for t in trials
        if (number is None or t.number == number)
        and t.state == TrialState.FAIL
        and (not marked or t.user_attrs.get(INTERRUPTED) == t.number)  # its own mark, not a parent's
        and "fail_reason" not in t.user_attrs  # diverged or crashed: a retry would fail again
        and t.number not in retried
        and len(t.system_attrs.get(RETRY_HISTORY, [])) < max_retry
    ]


MLFLOW_STATUS = {TrialState.COMPLETE: "COMPLETE", TrialState.PRUNED: "PRUNED", TrialState.FAIL: "FAIL"}


def reconcile_runs(study: optuna.Study, tracker: Tracker, parent: str) -> int:
    """End the MLflow runs left RUNNING for trials that are over (their worker could not write the
    end: a full disk, a lost tracking server), in the state Optuna records; returns how many."""
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    ended = 0
    for run in tracker.runs(parent, phase="hpo"):
        if run.info.status != "RUNNING":
            continue
        number = int(run.data.tags.get("harness.trial", -1))
        state = states.get(number)
        if state in MLFLOW_STATUS:
            tracker.end(run.info.run_id, MLFLOW_STATUS[state])
            ended += 1
    if ended:
        log.warning("%d MLflow run(s) of trials that ended were still RUNNING; ended as their trials", ended)
    return ended
