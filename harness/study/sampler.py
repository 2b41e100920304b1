"""A sampler whose random stream is a function of (seed, draw index), not of the process.

Optuna seeds a sampler once per process, so every new process (a resume, a raised budget, a
second terminal) replays the first draws of the last one: the same parameter sets are proposed
again and the budget is wasted. Here the wrapped sampler is re-created for each trial from a seed
derived from the study's seed and the trial's *draw index*: how many fresh trials (not retries)
come before it. A retry of an interrupted trial re-runs its original's params and takes a trial
number, but no draw index, so the draws after an interruption are those an uninterrupted study
makes: the same configs in the same order, whatever was interrupted. Draw indices are unique
within a study, so no two fresh trials share a random stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from harness.study.optuna_api import FAILED_TRIAL


def trial_seed(seed: int, number: int) -> int:
    """Independent streams for neighbouring numbers (a hash, not seed + number)."""
    return int(np.random.SeedSequence([seed % 2**63, number + 1]).generate_state(1)[0])


def draw_index(study: Study, number: int) -> int:
    """The number of fresh trials before trial ``number``: retries (they carry ``failed_trial``) draw
    nothing. Trial numbers are given out in order by the storage, so this is fixed once the trial
    exists, whichever worker asks and whenever."""
    earlier = study.get_trials(deepcopy=False)[:number]
    return sum(FAILED_TRIAL not in t.system_attrs for t in earlier)


def draws(study: Study) -> dict[int, int]:
    """Every trial's draw index (a retry's is its chain's first trial's): the name of a config that
    an interruption does not change, where the trial number does."""
    return draws_of(study.get_trials(deepcopy=False))


def draws_of(trials: Sequence[FrozenTrial]) -> dict[int, int]:
    """:func:`draws` over a study's trials, in number order."""
    out: dict[int, int] = {}
    fresh = 0
    for t in trials:
        if FAILED_TRIAL in t.system_attrs:
            out[t.number] = out.get(int(t.system_attrs[FAILED_TRIAL]), -1)
        else:
            out[t.number], fresh = fresh, fresh + 1
    return out


def chain_draw(study: Study, number: int, system: dict[str, Any]) -> int:
    """The draw index a trial stands for: its own if fresh, its chain's first trial's if a retry
    (``failed_trial`` names that one, however many retries lie between)."""
    return draw_index(study, int(system.get(FAILED_TRIAL, number)))


class TrialSeededSampler(BaseSampler):
    def __init__(self, make: Callable[[int], BaseSampler], seed: int) -> None:
        self.make, self.seed = make, seed
        self.inner = make(trial_seed(seed, -1))

    def __repr__(self) -> str:
        return f"TrialSeededSampler({self.inner!r}, seed={self.seed})"

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self.inner = self.make(trial_seed(self.seed, draw_index(study, trial.number)))
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Streams are fixed by (seed, trial number); nothing to reseed."""


def make_sampler(name: str, seed: int, n_startup_trials: int) -> BaseSampler:
    if name == "random":
        return TrialSeededSampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
    return TrialSeededSampler(
        lambda s: optuna.samplers.TPESampler(seed=s, n_startup_trials=n_startup_trials), seed
    )
