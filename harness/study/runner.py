"""Create a study once, then run workers that share its storage until the budget is met."""

from __future__ import annotations

import json
import logging
import signal
import time
import uuid
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from harness.errors import ConfigError, HarnessError
from harness.study.config import StudyConfig
from harness.study.data import prepare, resolve_device
from harness.study.objective import Objective
from harness.tracking import Tracker

log = logging.getLogger(__name__)
BUDGET_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


def open_storage(url: str) -> optuna.storages.BaseStorage | str:
    """``journal:PATH`` (default; safe for several local workers) or any SQLAlchemy URL."""
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    try:
        return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
    except Exception as e:
        raise HarnessError(f"cannot open Optuna storage {url!r}: {str(e).splitlines()[0]}") from e


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
    storage = open_storage(cfg.storage_url)
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
    storage = open_storage(cfg.storage_url)
    study = optuna.create_study(
        study_name=cfg.name,
        storage=storage,
        direction="maximize",
        sampler=_sampler(cfg, 0),
        pruner=_pruner(cfg),
        load_if_exists=True,
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


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=BUDGET_STATES))


def failed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.FAIL,))


def _stop_on_sigterm() -> None:
    """SLURM's time limit and scancel send SIGTERM: end the running trial as FAIL, not RUNNING forever."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(
            f"signal {signum}"
        )  # Optuna records FAIL on KeyboardInterrupt, then re-raises

    signal.signal(signal.SIGTERM, handler)


def run_worker(cfg: StudyConfig, worker: int = 0) -> int:
    """Run trials until the study (all workers together) has ``budget.n_trials`` finished ones."""
    n_trials = cfg.budget["n_trials"] or 10**9  # None: the timeout alone ends the study
    study = load_study(cfg, worker)
    if finished(study) >= n_trials:
        log.info("study %s already has %d finished trials; nothing to do", cfg.name, finished(study))
        return 0
    device = resolve_device(cfg.device)
    prep = prepare(cfg, device)
    tracker = tracker_for(cfg)
    parent = tracker.parent_run(cfg.name, study_uid(study), cfg.to_dict())
    objective = Objective(cfg, prep, device, tracker, parent)
    before = time.perf_counter()
    mine: list[int] = []
    max_failures = max(3, min(n_trials, 50))
    _stop_on_sigterm()

    def stop_at_budget(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        mine.append(trial.number)
        if finished(study) >= n_trials:
            study.stop()
        fails = failed(study)
        if len(fails) >= max_failures:  # a config that always fails must not loop forever
            reason = fails[-1].user_attrs.get("fail_reason", "see the worker log")
            raise HarnessError(
                f"study {cfg.name!r}: {len(fails)} trials failed (last: {reason}); fix the search space"
            )

    study.optimize(
        objective,
        n_trials=None,
        timeout=cfg.budget.get("timeout"),
        callbacks=[stop_at_budget],
        gc_after_trial=False,
    )
    log.info("worker %d ran %d trials in %.1f s", worker, len(mine), time.perf_counter() - before)
    return len(mine)
