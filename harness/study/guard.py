"""Checks that run before a command writes anything: is there a stored study, and does it match?

``prepare``, ``create``, ``study run`` and Snakemake's ``freeze_config`` call ``refuse_changed``
first, so a config the stored study refuses leaves every stored byte (split manifest, frozen
config, journal, MLflow database) as it was.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from harness.errors import ConfigError
from harness.study.config import StudyConfig, protocol_changes
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


def n_finished(study: optuna.Study) -> int:
    states = (TrialState.COMPLETE, TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def changed_error(cfg: StudyConfig, study: optuna.Study) -> ConfigError:
    """What differs, stored vs this config, and the two ways out (rename, or set the old one aside)."""
    stored = study.user_attrs.get("config")
    diffs = protocol_changes(stored, cfg.raw) if isinstance(stored, dict) else []
    what = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
    n = n_finished(study)
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


def refuse_changed(cfg: StudyConfig, manifest: dict | None = None) -> None:
    """Refuse a config the stored study would refuse; with the split ``manifest`` the data now
    gives, also data other than the search ran on (another split, another copy of the dataset)."""
    study = stored_study(cfg)
    if study is None:
        return
    if study.user_attrs.get("space_hash") not in (None, cfg.space_hash()):
        raise changed_error(cfg, study)
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
