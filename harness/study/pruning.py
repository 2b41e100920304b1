"""The study's pruner, and the two rung pruners made to resume as an uninterrupted study runs.

Successive halving records each trial's value at each rung and prunes a trial whose value is not
in the top 1/reduction_factor of the values recorded there; Hyperband runs several such brackets,
each trial in one. Both would count an interrupted trial twice (its original, marked FAIL, and its
retry, which re-reports the epochs it resumes), and Hyperband hashes a trial's bracket from its
trial number, which a retry changes. Here a retried original competes nowhere, and a bracket is
hashed from the draw index (:mod:`harness.study.sampler`), which a retry shares with its original:
a study stopped and resumed prunes the trials an uninterrupted one prunes.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.study.config import StudyConfig
from harness.study.optuna_api import RETRY_HISTORY, KeyedHyperbandPruner
from harness.study.sampler import draws_of


def max_resource(cfg: StudyConfig) -> int:
    """The most a trial runs: it reports after each epoch of each validation fold."""
    return cfg.epochs * cfg.val_folds


def superseded(study: optuna.Study) -> set[int]:
    """Trials a retry continues: their epochs are the retry's now."""
    return superseded_of(study.get_trials(deepcopy=False))


def superseded_of(trials: list[FrozenTrial]) -> set[int]:
    return {n for t in trials for n in t.system_attrs.get(RETRY_HISTORY, [])}


def bracket_keys(trials: list[FrozenTrial]) -> dict[int, int | None]:
    """Each trial's Hyperband key: its draw index, None where a retry supersedes it."""
    gone = superseded_of(trials)
    return {n: None if n in gone else d for n, d in draws_of(trials).items()}


class _Competitors:
    """A study seen without the trials a retry supersedes (everything else passes through)."""

    def __init__(self, study: optuna.Study) -> None:
        self._study, self._gone = study, superseded(study)

    def get_trials(
        self, deepcopy: bool = True, states: tuple[TrialState, ...] | None = None
    ) -> list[FrozenTrial]:
        trials = self._study.get_trials(deepcopy=deepcopy, states=states)
        return [t for t in trials if t.number not in self._gone]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class ResumableHalvingPruner(optuna.pruners.SuccessiveHalvingPruner):
    """Successive halving where a retried original does not compete beside its retry."""

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return super().prune(_Competitors(study), trial)  # type: ignore[arg-type]


def pruner_for(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    """The study's pruner. A trial's resource is the epochs it has run over all folds, so Hyperband
    and successive halving see ``epochs x val_folds`` as the most a trial can get."""
    p = cfg.pruner
    if p.name == "none":
        return optuna.pruners.NopPruner()
    if p.name == "hyperband":
        return KeyedHyperbandPruner(
            bracket_keys,
            min_resource=p.min_resource,
            max_resource=max_resource(cfg),
            reduction_factor=p.reduction_factor,
        )
    if p.name == "successive_halving":
        return ResumableHalvingPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
