"""A study's identity: its storage, its uid, its MLflow tracker, its files. What the evaluation and
the report need of a study, without the worker machinery (signals, sweeps, the trial loop)."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

from harness.errors import HarnessError, redact_url
from harness.study.arms import arm_at, members
from harness.study.config import StudyConfig, build
from harness.study.guard import changed_error, is_comparison, n_finished, refuse_lost_arms, stored_study
from harness.study.presence import live_workers
from harness.study.pruning import pruner_for, superseded
from harness.study.sampler import make_sampler
from harness.study.storage import StaleCallback, open_storage
from harness.tracking import Tracker
from harness.tracking.mlflow_tracker import sqlite_path

log = logging.getLogger(__name__)


def storage_for(cfg: StudyConfig, on_stale: StaleCallback | None = None) -> optuna.storages.BaseStorage:
    ft = cfg.fault_tolerance
    return open_storage(cfg.storage_url, ft.heartbeat_interval, ft.grace_period, on_stale)


def sampler_for(cfg: StudyConfig) -> optuna.samplers.BaseSampler:
    """Seeded per trial number: workers, resumes and raised budgets never repeat a draw."""
    s = cfg.sampler
    return make_sampler(s.name, s.seed, s.n_startup_trials)


IMAGES_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def images_spent(study: optuna.Study) -> float:
    """Images the study's ended trials processed (offline mining's whole-set passes counted; a trial
    that failed counts what it ran): what ``budget.images`` limits. An interrupted trial's epochs are
    counted once, in its retry (which resumes them), as an uninterrupted study counts them."""
    gone = superseded(study)
    return float(
        sum(
            t.user_attrs.get("images_processed", 0.0)
            for t in study.get_trials(deepcopy=False, states=IMAGES_STATES)
            if t.number not in gone
        )
    )


def images_met(cfg: StudyConfig, study: optuna.Study) -> bool:
    """``budget.images`` is set and spent."""
    return cfg.budget.images is not None and images_spent(study) >= cfg.budget.images


def budget_held(cfg: StudyConfig, study: optuna.Study) -> str | None:
    """The budget that is spent, ``images`` before ``n_trials``; None while neither is (a
    timeout-only budget never is, here)."""
    if images_met(cfg, study):
        return "images"
    n = cfg.budget.n_trials
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    return "n_trials" if n is not None and done >= n else None


def budget_met(cfg: StudyConfig, study: optuna.Study) -> bool:
    """The trial or image budget is spent."""
    return budget_held(cfg, study) is not None


def tracker_for(cfg: StudyConfig) -> Tracker:
    """The study's MLflow experiment (an arm's: its comparison's; each arm has its own parent run)."""
    return Tracker(cfg.tracking_uri, cfg.experiment, cfg.results / "mlartifacts")


def load_study(cfg: StudyConfig, on_stale: StaleCallback | None = None) -> optuna.Study:
    """Open an existing study; refuse it when it was created with another search space/protocol.
    ``on_stale``: what a worker does with a trial whose worker died (see ``harness.study.sweep``).
    A comparison is refused too when one of its arms lost its study. A journal that is not there is
    not created (opening one creates it)."""
    missing = HarnessError(
        f"study {cfg.name!r} does not exist in {cfg.storage_url}; run 'harness study create' first"
    )
    if (
        cfg.storage_url.startswith("journal:")
        and not Path(cfg.storage_url.removeprefix("journal:")).is_file()
    ):
        raise missing
    try:
        study = optuna.load_study(
            study_name=cfg.name,
            storage=storage_for(cfg, on_stale),
            sampler=sampler_for(cfg),
            pruner=pruner_for(cfg),
        )
    except KeyError:
        raise missing from None
    if study.user_attrs.get("space_hash") not in (None, cfg.space_hash()):
        raise changed_error(cfg, study)
    refuse_lost_arms(cfg, study)
    return study


def checked_members(cfg: StudyConfig, arm: str | None = None) -> list[StudyConfig]:
    """The studies a command runs (``harness.study.arms.members``), once a comparison's own record has
    accepted this config: the arm set it was created with, and every arm's study still there."""
    if is_comparison(cfg):
        load_study(cfg)
    return members(cfg, arm)


def study_uid(study: optuna.Study) -> str:
    """Identifies this incarnation of the study: a study deleted and re-created gets new MLflow runs."""
    return str(study.user_attrs.get("uid", "legacy"))


def read_manifest(cfg: StudyConfig) -> dict | None:
    """The study's split manifest, or None before ``prepare`` wrote it."""
    path = cfg.manifest_path
    return json.loads(path.read_text()) if path.is_file() else None


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


def parent_run(cfg: StudyConfig, study: optuna.Study, tracker: Tracker) -> str:
    """The study's MLflow parent run; a warning when it had to be created for a study that already
    has finished trials: their runs are gone from this tracking store (a deleted or replaced
    mlflow.db), though the Optuna study and every result file are intact."""
    run = tracker.parent_run(cfg.name, study_uid(study), cfg.to_dict())
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    if tracker.created_parent and finished:
        log.warning(
            "MLflow store %s held no run of study %s, which has %d finished trials: their runs are gone"
            " from tracking (was mlflow.db deleted or replaced?); new runs go under a new parent run,"
            " and the Optuna study and the result files are intact",
            redact_url(cfg.tracking_uri),
            cfg.name,
            len(finished),
        )
    return run


# --- the MLflow parent run says what the study is doing ----------------------------------------------


def activity(cfg: StudyConfig, outcome: str | None = None) -> tuple[bool, int, bool]:
    """(a worker is alive, finished trials, the budget is met); a comparison's: over its arms. A
    timeout-only budget (``n_trials: null``) is met when a worker ran out its time (``outcome`` None:
    it ended by itself) after finished trials, not when it was stopped or failed."""
    if is_comparison(cfg):
        parts = [activity(arm_at(cfg, a), outcome) for a in cfg.arm_units]
        return any(p[0] for p in parts), sum(p[1] for p in parts), all(p[2] for p in parts)
    study = stored_study(cfg)
    n = 0 if study is None else n_finished(study)
    if cfg.budget.n_trials is None and cfg.budget.images is None:
        met = n > 0 and outcome is None
    else:
        met = study is not None and budget_met(cfg, study)
    return bool(live_workers(cfg)), n, met


def parent_status(cfg: StudyConfig, outcome: str | None = None) -> str:
    """RUNNING while a worker of the study is alive; else FINISHED once its budget is met, SCHEDULED
    before its first finished trial, FAILED when the last worker failed (``outcome`` "failed"),
    KILLED when it stopped short."""
    alive, n, met = activity(cfg, outcome)
    if alive:
        return "RUNNING"
    if met:
        return "FINISHED"
    return "FAILED" if outcome == "failed" else "KILLED" if n else "SCHEDULED"


def comparison_config(arm: StudyConfig) -> StudyConfig | None:
    """The comparison an arm belongs to, from the config its record stores (None: no record)."""
    home = replace(arm, name=str(arm.parent), arm=None, parent=None, compare=None)
    study = stored_study(home)
    stored = None if study is None else study.user_attrs.get("config")
    if not isinstance(stored, dict):
        return None
    try:
        return build(stored, arm.user, arm.source)
    except (KeyError, TypeError, ValueError):
        return None


def settle_parent(cfg: StudyConfig, outcome: str | None = None) -> None:
    """Set the study's parent run (and an arm's comparison's) to what the study is doing now. Never
    creates a run; a tracking store that cannot be reached costs a warning, not the command."""
    targets = [cfg] + ([c] if cfg.parent is not None and (c := comparison_config(cfg)) else [])
    for c in targets:
        try:
            study = stored_study(c)
            if study is None:
                continue
            tracker = tracker_for(c)
            run = tracker.find_parent(c.name, study_uid(study))
            if run is not None:
                tracker.set_status(run, parent_status(c, outcome))
        except Exception as e:  # the study's own records are intact either way
            log.warning("study %s: could not set its MLflow parent run's status (%s)", c.name, e)
