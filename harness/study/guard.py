"""Checks that run before a command writes anything: is there a stored study, and does it match?

``prepare``, ``create``, ``study run`` and Snakemake's ``freeze_config`` call ``refuse_changed``
first, so a config the stored study refuses leaves every stored byte (split manifest, frozen
config, journal, MLflow database) as it was.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
from optuna.trial import TrialState

from harness.data.digests import Content
from harness.errors import ConfigError, HarnessError
from harness.progress import duration
from harness.study.arms import arm_at
from harness.study.config import StudyConfig, arm_values, protocol_changes
from harness.study.storage import open_storage


def stored_study(cfg: StudyConfig) -> optuna.Study | None:
    """The stored study of this name, or None; creates no journal file where there is none."""
    url = cfg.storage_url
    if url.startswith("journal:") and not Path(url.removeprefix("journal:")).is_file():
        return None
    try:
        return optuna.load_study(study_name=cfg.name, storage=open_storage(url))
    except KeyError:
        return None


# --- a comparison's arms: the set it was created with, and what each holds ----------------------------


def is_comparison(cfg: StudyConfig) -> bool:
    return cfg.compare is not None and cfg.parent is None


def created_arms(study: optuna.Study) -> list[str] | None:
    """The arms of the config a comparison was created with (None: not a comparison's record)."""
    stored = study.user_attrs.get("config")
    if not isinstance(stored, dict) or not stored.get("compare"):
        return None
    return list(arm_values(stored)) or None


def recorded_arms(cfg: StudyConfig, study: optuna.Study) -> dict[str, str | None]:
    """The arms a comparison's creation finished, with each one's uid: its record's, or (a comparison
    created before records held them) its study.json's, written once every arm existed. Empty while
    the comparison is being created."""
    arms = study.user_attrs.get("arms")
    if not isinstance(arms, dict):
        try:
            arms = json.loads((cfg.study_dir / "study.json").read_text()).get("arms")
        except (OSError, ValueError, AttributeError):
            arms = None
    return {str(k): None if v is None else str(v) for k, v in (arms or {}).items()}


def holdings(cfg: StudyConfig, arms: list[str]) -> tuple[int, str]:
    """What the studies of ``arms`` (arms or search repeats, ``{arm}@r{r}``) hold: their finished
    trials in all, and a phrase saying so."""
    counts, evaluated = {}, 0
    for arm in arms:
        a = arm_at(cfg, arm)
        s = stored_study(a)
        counts[arm] = 0 if s is None else n_finished(s)
        evaluated += len(list((a.study_dir / "evaluation").glob("run-*.npz")))
    n = sum(counts.values())
    text = f"{n} finished trial{'s' if n != 1 else ''} ({', '.join(f'{k} {v}' for k, v in counts.items())})"
    if evaluated:
        text += f" and {evaluated} stored evaluation run{'s' if evaluated != 1 else ''} (re-trained on test)"
    return n, text


def _names(arms: list[str]) -> str:
    return ", ".join(arms)


def arm_set_error(cfg: StudyConfig, study: optuna.Study, old: list[str]) -> ConfigError:
    """A comparison's arms are fixed when it is created: another set is another comparison."""
    added = [a for a in cfg.arms if a not in old]
    removed = [a for a in old if a not in cfg.arms]
    what = " and ".join(
        part
        for part in (
            f"adds {_names(added)}" if added else "",
            f"removes {_names(removed)}" if removed else "",
        )
        if part
    )
    n, held = holdings(cfg, list(dict.fromkeys([*old, *recorded_arms(cfg, study)])))
    delete = f"harness study delete --config {cfg.command_path}"
    way_out = (
        f"rename the study (name:) to compare the new set from scratch, or set the old one aside (it moves"
        f" to {cfg.study_dir / 'attic'}/) with '{delete} --force', then rerun"
        if n
        else f"nothing is lost: run '{delete}', then rerun"
    )
    return ConfigError(
        f"comparison {cfg.name!r} was created with the arms {_names(old)}; this config {what}, and its"
        f" arms hold {held}; nothing was written: {way_out}"
    )


def lost_arms(cfg: StudyConfig, study: optuna.Study) -> list[str]:
    """Arms (search repeats) the comparison was created with whose own study is gone (a deleted
    journal, a partial copy)."""
    units = cfg.arm_units
    return [u for u in recorded_arms(cfg, study) if u in units and stored_study(arm_at(cfg, u)) is None]


def lost_arm_error(cfg: StudyConfig, arm: str) -> HarnessError:
    """What is missing, the ways on, and what starting the arm afresh costs (at the other arms' pace)."""
    a = arm_at(cfg, arm)
    others = [x for x in cfg.arm_units if x != arm]
    n, held = holdings(cfg, others)
    where = cfg.storage_url if cfg.storage else a.storage_url.removeprefix("journal:")
    trials = a.budget.n_trials
    pace = _pace(cfg, others)
    cost = f"{trials} trials" if trials else "its trials"
    if pace is not None and trials:
        cost += f" (about {duration(pace * trials)} at the other arms' pace)"
    return HarnessError(
        f"arm {arm!r} of comparison {cfg.name!r} has no study: {where} holds no study {a.name!r} (deleted, or"
        f" not copied with the rest), though the comparison was created with it; restore it from a copy, or"
        f" run 'harness study create --config {cfg.command_path}' to start the arm afresh (what is left of"
        f" its old results moves to {a.study_dir / 'attic'}/): it then runs {cost} again and is evaluated"
        f" again; the other arms keep their {held}"
    )


def _pace(cfg: StudyConfig, arms: list[str]) -> float | None:
    """Seconds per finished trial over ``arms``' trials, from their start and end times."""
    spent = []
    for arm in arms:
        s = stored_study(arm_at(cfg, arm))
        for t in (
            [] if s is None else s.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        ):
            if t.datetime_start and t.datetime_complete:
                spent.append((t.datetime_complete - t.datetime_start).total_seconds())
    return sum(spent) / len(spent) if spent else None


def refuse_lost_arms(cfg: StudyConfig, study: optuna.Study | None = None) -> None:
    """Refuse a comparison one of whose arms lost its study (the report would rank it with the old
    numbers, ``snakemake`` would see nothing to do); ``harness study create`` starts it afresh."""
    if not is_comparison(cfg):
        return
    study = study if study is not None else stored_study(cfg)
    if study is None:
        return
    lost = lost_arms(cfg, study)
    if lost:
        raise lost_arm_error(cfg, lost[0])


def n_finished(study: optuna.Study) -> int:
    states = (TrialState.COMPLETE, TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def changed_error(cfg: StudyConfig, study: optuna.Study) -> ConfigError:
    """What differs, stored vs this config, and the two ways out (rename, or set the old one aside).
    A comparison's trials are its arms': they are what a change would lose."""
    old = created_arms(study) if is_comparison(cfg) else None
    if old is not None and set(old) != set(cfg.arms):
        return arm_set_error(cfg, study, old)
    stored = study.user_attrs.get("config")
    diffs = protocol_changes(stored, cfg.raw) if isinstance(stored, dict) else []
    what = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
    n = n_finished(study) + (holdings(cfg, old)[0] if old is not None else 0)
    delete = f"harness study delete --config {cfg.command_path}"
    if n == 0:
        way_out = f"it has no finished trial, so nothing is lost: run '{delete}', then rerun"
    else:
        way_out = (
            f"it has {n} finished trial{'s' if n != 1 else ''}: rename the study (name:) to keep them,"
            f" or set it aside with '{delete} --force'"
        )
    return ConfigError(
        f"study {cfg.name!r} already exists in {cfg.storage_url} with a different search space or"
        f" protocol ({what or 'its stored config predates this check'}); {way_out}"
    )


# --- the bytes a study was searched on -------------------------------------------------------------

DIGESTS = "dataset_digests.json"  # beside the split manifest: every file's SHA-256 the search saw


def digests_path(cfg: StudyConfig) -> Path:
    return cfg.manifest_path.with_name(DIGESTS)


def stored_content(cfg: StudyConfig) -> dict | None:
    """The content record ``prepare`` keeps (``{"key", "files"}``), or None."""
    try:
        data = json.loads(digests_path(cfg).read_text())
        return data if isinstance(data, dict) and isinstance(data.get("files"), dict) else None
    except (OSError, ValueError):
        return None


def store_content(cfg: StudyConfig, content: Content) -> None:
    """Atomic, and a no-op while the key is the same (its mtime is no Snakemake trigger)."""
    stored = stored_content(cfg)
    if stored is not None and stored.get("key") == content.key:
        return
    path = digests_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": content.key, "root": content.root, "files": content.files}))
    tmp.replace(path)


def data_changed_error(cfg: StudyConfig, content: Content, searched: str) -> HarnessError:
    """A study whose images changed under it: which file, and the two ways on."""
    stored = stored_content(cfg)
    changed = content.changed_since(stored["files"]) if stored and stored.get("key") == searched else []
    if changed:
        first = changed[0]
        what = (
            "is gone"
            if first not in content.files
            else "is new"
            if first not in stored["files"]  # type: ignore[index]
            else "has other bytes"
        )
        more = (
            f" (and {len(changed) - 1} more file{'s' if len(changed) != 2 else ''})"
            if len(changed) > 1
            else ""
        )
        head = f"{first} {what}{more}"
    else:
        head = f"content key {content.key}, searched on {searched}"
    searched_root = stored.get("root") if stored else None
    if searched_root and content.root and searched_root != content.root:  # another copy
        return HarnessError(
            f"the dataset copy at {content.root} is not the one study {cfg.name!r} was searched on"
            f" ({searched_root}: dataset fingerprint {content.key}, searched on {searched}; {head});"
            f" {cfg.manifest_path} is left as it was: point data_root at the copy the search used, or"
            " search this copy as a new study: rename the study (name:), or set this one aside with"
            f" 'harness study delete --config {cfg.command_path} --force'"
        )
    return HarnessError(
        f"the data of study {cfg.name!r} changed since its search ({head}): its trials were trained and"
        " validated on the old images, and new ones would mix two datasets; restore the copy the search"
        " used, or search the new data as a new study: rename the study (name:), or set this one aside"
        f" with 'harness study delete --config {cfg.command_path} --force'"
    )


WEIGHTS = "weights.json"  # in the study's folder: the backbone weights it uses (Source.record)


def weights_path(cfg: StudyConfig) -> Path:
    """results/{study}/weights.json; an arm's in its own folder (arms of compare: backbone differ)."""
    return cfg.study_dir / WEIGHTS


def stored_weights(cfg: StudyConfig) -> dict | None:
    try:
        data = json.loads(weights_path(cfg).read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def store_weights(cfg: StudyConfig, record: dict) -> None:
    """Atomic, and a no-op while the record is the same (its mtime is no Snakemake trigger)."""
    if stored_weights(cfg) == json.loads(json.dumps(record)):
        return
    path = weights_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def _weights_of(record: dict) -> tuple:
    return record.get("key"), record.get("sha256")


def weights_changed_error(cfg: StudyConfig, searched: dict, now: dict) -> HarnessError:
    def said(r: dict) -> str:
        digest = f", sha256 {str(r.get('sha256'))[:12]}" if r.get("sha256") else ""
        return f"{r.get('origin')} ({r.get('key')}{digest})"

    return ConfigError(
        f"study {cfg.name!r} was searched with the weights {said(searched)}, but {cfg.backbone!r} now"
        f" loads {said(now)}; nothing was changed: restore those weights, or give the study a new"
        " name (or `harness study delete --force`) to search again with these"
    )


def refuse_changed(
    cfg: StudyConfig,
    manifest: dict | None = None,
    content: Content | None = None,
    weights: dict | None = None,
) -> None:
    """Refuse a config the stored study would refuse; with the split ``manifest`` the data now
    gives, also data other than the search ran on (another split, another copy of the dataset); with
    the copy's ``content``, a copy whose bytes changed since the search (a replaced image); with the
    backbone's ``weights`` record, other weights than the search used (a hub file updated under its tag)."""
    study = stored_study(cfg)
    if study is None:
        return
    if study.user_attrs.get("space_hash") not in (None, cfg.space_hash()):
        raise changed_error(cfg, study)
    searched_weights = study.user_attrs.get("weights")
    if weights is not None and searched_weights and _weights_of(searched_weights) != _weights_of(weights):
        raise weights_changed_error(cfg, searched_weights, weights)
    searched = study.user_attrs.get("dataset_content")
    if content is not None and searched and content.key != searched:
        raise data_changed_error(cfg, content, searched)
    if manifest is None:
        return
    path = cfg.manifest_path
    split = study.user_attrs.get("split_hash")
    if split and manifest["hash"] != split:
        raise ConfigError(
            f"the data now gives split {manifest['hash']}, but study {cfg.name!r} was searched on split"
            f" {split}; {path} is left as it was: point data_root at the copy the search used"
        )
    files = study.user_attrs.get("dataset_files")
    if files and manifest.get("dataset_files") != files:
        raise ConfigError(
            f"the dataset copy now found is not the one study {cfg.name!r} was searched on (dataset"
            f" fingerprint {manifest.get('dataset_files')}, searched on {files}: other files, labels or file"
            f" sizes); {path} is left as it was: point data_root at the copy the search used"
        )
