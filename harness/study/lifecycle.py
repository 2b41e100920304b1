"""A study's life: created once (under its lock, so concurrent first runs make one study with one
uid), its config frozen for the pipeline, and set aside whole when its name is to be used again."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from harness.errors import HarnessError
from harness.models.weights import weights_params
from harness.study.arms import arm_at, arm_configs
from harness.study.config import MANIFEST, StudyConfig, config_warnings, write_config
from harness.study.guard import (
    changed_error,
    created_arms,
    lost_arms,
    n_finished,
    recorded_arms,
    refuse_changed,
    stored_content,
    stored_study,
    stored_weights,
)
from harness.study.identity import (
    check_writable,
    pruner_for,
    read_manifest,
    sampler_for,
    settle_parent,
    storage_for,
    study_uid,
    tracker_for,
)
from harness.study.presence import describe_live
from harness.study.storage import budget_lock, open_storage
from harness.study.sweep import sweep

log = logging.getLogger(__name__)


def create(cfg: StudyConfig, parent_uid: str | None = None) -> dict:
    """Create (or re-open) the study and its MLflow parent run; refuse a changed search space. A
    comparison (``compare:``) creates its record and then each of its arms.

    Under the study's lock, so two first runs at once make one study with one uid and one parent run.
    """
    refuse_changed(cfg)
    check_writable(cfg)
    storage = storage_for(cfg)
    tracker = tracker_for(cfg)  # initialise the MLflow schema once, before workers start
    with budget_lock(cfg.storage_url, cfg.name) as lock, lock:
        try:  # an existing study is checked before anything is written to it
            study = optuna.load_study(
                study_name=cfg.name, storage=storage, sampler=sampler_for(cfg), pruner=pruner_for(cfg)
            )
        except KeyError:
            study = optuna.create_study(
                study_name=cfg.name,
                storage=storage,
                direction="maximize",
                sampler=sampler_for(cfg),
                pruner=pruner_for(cfg),
                load_if_exists=True,  # another process (without our lock: another RDB) may create it
            )
        stored = study.user_attrs.get("space_hash")
        if stored is not None and stored != cfg.space_hash():
            raise changed_error(cfg, study)
        if "uid" not in study.user_attrs:  # first: a crash below leaves a study that is still its own
            study.set_user_attr("uid", uuid.uuid4().hex[:12])
        if stored is None:
            manifest = read_manifest(cfg) or {}
            if parent_uid is not None:
                study.set_user_attr("parent_uid", parent_uid)  # the comparison this arm belongs to
            study.set_user_attr("config", cfg.to_dict())
            study.set_user_attr("split_hash", manifest.get("hash"))
            study.set_user_attr("dataset_files", manifest.get("dataset_files"))
            study.set_user_attr("dataset_content", (stored_content(cfg) or {}).get("key"))
            study.set_user_attr("weights", stored_weights(cfg))
            study.set_user_attr("space_hash", cfg.space_hash())  # last: the study is complete
        parent = tracker.parent_run(cfg.name, study_uid(study), cfg.to_dict())
        tracker.log_params(parent, weights_params(stored_weights(cfg)))
    for w in config_warnings(cfg, read_manifest(cfg)):
        log.warning("study %s: %s", cfg.name, w)
    info: dict[str, Any] = {
        "study": cfg.name,
        "uid": study_uid(study),
        "storage": cfg.storage_url,
        "space_hash": cfg.space_hash(),
        "mlflow_uri": cfg.tracking_uri,
        "mlflow_parent_run_id": parent,
    }
    if cfg.compare is not None:  # last: study.json marks the comparison and every arm as created
        lost = {arm: recorded_arms(cfg, study)[arm] for arm in lost_arms(cfg, study)}
        for arm, old in lost.items():
            _set_aside_leftovers(arm_at(cfg, arm), old)
        info["arms"] = {str(a.unit): create(a, study_uid(study))["uid"] for a in arm_configs(cfg)}
        for arm in lost:
            log.warning(
                "study %s: arm %s had lost its study; it is created afresh (uid %s) and runs its trials"
                " again, then its evaluation; the other arms keep theirs",
                cfg.name,
                arm,
                info["arms"][arm],
            )
        study.set_user_attr("arms", info["arms"])
    cfg.study_dir.mkdir(parents=True, exist_ok=True)
    (cfg.study_dir / "study.json").write_text(json.dumps(info, indent=1))
    settle_parent(cfg)  # SCHEDULED until a worker runs (RUNNING), FINISHED once the budget is met
    return info


def freeze(cfg: StudyConfig, path: Path) -> None:
    """Write the frozen config the pipeline's later rules read, unless the stored study refuses it."""
    refuse_changed(cfg)
    write_config(cfg, path)


# What a study owns under results/{study}/, set aside together by ``delete``.
DERIVED = (
    "study.json",
    MANIFEST,
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
    one of its trials, and, without ``force``, for a study with finished trials. A comparison goes
    with all its arms, each checked the same way.
    """
    study = stored_study(cfg)
    if study is None:
        raise HarnessError(f"study {cfg.name!r} does not exist in {cfg.storage_url}; nothing to delete")
    # every arm the comparison was created with or has now (an arm set changed since is set aside too)
    arms = [*(created_arms(study) or []), *recorded_arms(cfg, study), *cfg.arm_units] if cfg.compare else []
    located = [arm_at(cfg, arm) for arm in dict.fromkeys(arms)]
    members = [(cfg, study)] + [(a, s) for a in located if (s := stored_study(a)) is not None]
    gone = [a for a in located if stored_study(a) is None and a.study_dir.is_dir()]
    with contextlib.ExitStack() as stack:
        for member, _ in members:  # every arm's lock: no worker of any arm takes a trial meanwhile
            stack.enter_context(stack.enter_context(budget_lock(member.storage_url, member.name)))
        n = sum(_deletable(member, s, force) for member, s in members)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        uid = study_uid(study)
        attic = cfg.study_dir / "attic" / f"{uid}-{stamp}"
        for a in gone:  # an arm whose study was lost: what it left
            _move_derived(a, attic / "arms" / str(a.unit))
        for member, s in reversed(members):  # the arms first: the comparison's record goes last
            _set_aside(member, s, attic if member is cfg else attic / "arms" / str(member.unit))
            if member.parent is not None:
                with contextlib.suppress(OSError):  # its folder now holds nothing (or its own attic)
                    member.study_dir.rmdir()
    log.info("study %s (uid %s, %d finished trials) set aside in %s", cfg.name, uid, n, attic)
    return attic


def _deletable(cfg: StudyConfig, study: optuna.Study, force: bool) -> int:
    """Refuse while a worker of the study is alive (even one still loading its data) or a trial runs,
    or (without ``force``) when trials finished; their count."""
    live = describe_live(cfg)
    if live:
        raise HarnessError(f"study {cfg.name!r}: {live}, then delete it")
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
    return n


def _set_aside_leftovers(cfg: StudyConfig, uid: str | None) -> None:
    """What an arm whose study is gone left behind (its trials' folders, evaluation, worker marks)
    moves to its attic: none of it belongs to the arm created afresh, and Snakemake must not take
    the old marks for the new arm's work."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    attic = cfg.study_dir / "attic" / f"{uid or 'lost'}-{stamp}"
    moved = [name for name in DERIVED if (cfg.study_dir / name).exists()]
    if not moved:
        return
    attic.mkdir(parents=True, exist_ok=True)
    for name in moved:
        shutil.move(str(cfg.study_dir / name), str(attic / name))
    log.warning("study %s: what its lost study left (%s) is in %s", cfg.name, ", ".join(moved), attic)


def _set_aside(cfg: StudyConfig, study: optuna.Study, attic: Path) -> None:
    attic.mkdir(parents=True, exist_ok=True)
    study.trials_dataframe().to_csv(attic / "trials.csv", index=False)
    if cfg.storage_url == f"journal:{cfg.study_dir / 'optuna.journal'}":  # its own journal: moved whole
        shutil.move(str(cfg.study_dir / "optuna.journal"), str(attic / "optuna.journal"))
    else:
        optuna.delete_study(study_name=cfg.name, storage=open_storage(cfg.storage_url))
    _move_derived(cfg, attic)


def _move_derived(cfg: StudyConfig, attic: Path) -> None:
    for name in DERIVED:
        src = cfg.study_dir / name
        if src.exists():
            attic.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), str(attic / name))
