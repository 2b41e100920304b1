"""Arms: a fair comparison of the values of one hyperparameter (``compare: mining``), or of
backbones (``compare: backbone`` with ``backbone: [a, b, ...]``).

Tuning one joint study over "mining" lets the sampler spend its trials where things looked good
early: strategies end up with different budgets, and the one that got 2 trials is compared with
the one that got 10. Here each value of ``compare`` is an *arm*, its own Optuna study:

- the same ``budget.n_trials``, the same remaining search space, the same split (the comparison's
  split manifest), the same epochs and validation folds;
- its own sampler stream (seeded from ``sampler.seed`` and the arm's name) and its own pruner;
- its own journal, trials, checkpoints, lock and workers under ``results/{study}/arms/{arm}/``, so
  arms run as separate jobs (in parallel on a cluster) and resume, lock and recover one by one;
- its own MLflow parent run, in the comparison's experiment.

With ``search_repeats: R`` each arm is searched R times: R studies with the same budget, space and
split, and independent sampler streams (repeat 0 keeps the arm's own name and stream, repeat r >= 1
is the study ``{arm}@r{r}``, seeded from the arm's name and r). Each repeat's best config is
re-trained with the evaluation seeds, so the arm's result and its interval cover the search's own
randomness, not only re-training (``harness.evaluation.repeats``).

The comparison study itself holds no trials: its record (uid, config, split) ties the arms
together, and its evaluation scores the no-training baseline and gathers every arm's re-trained
best config (``harness.study.comparison``).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import replace

from harness.errors import ConfigError
from harness.study.config import COMPARE_BACKBONE, StudyConfig, arm_values, build, split_unit


def arm_seed(seed: int, unit: str) -> int:
    """The sampler seed of an arm's study (a search repeat's: of ``{arm}@r{r}``): a hash, so
    neighbouring arms and repeats share no stream."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{unit}".encode()).digest()[:4], "big")


def arm_config(cfg: StudyConfig, unit: str) -> StudyConfig:
    """The study of one arm (or one search repeat of it, ``{arm}@r{r}``): ``compare`` fixed to that
    value, everything else the comparison's."""
    if cfg.compare is None:
        raise ConfigError(f"study {cfg.name!r} compares nothing (no compare: key); it has no arms")
    values = arm_values(cfg.raw)
    arm, repeat = split_unit(unit)
    if arm not in values:
        raise ConfigError(f"study {cfg.name!r} has no arm {arm!r}; its arms: {', '.join(values)}")
    if repeat >= cfg.search_repeats:
        raise ConfigError(
            f"study {cfg.name!r} has no search repeat {repeat} of arm {arm!r}: it searches each arm"
            f" {cfg.search_repeats} time(s) (search_repeats), repeats 0-{cfg.search_repeats - 1}"
        )
    raw = copy.deepcopy(cfg.raw)
    raw["name"] = f"{cfg.name}.{unit}"
    raw["compare"] = None
    raw["search_repeats"] = 1
    if cfg.compare == COMPARE_BACKBONE:
        raw["backbone"] = values[arm]
    else:
        raw["search_space"][cfg.compare] = values[arm]
    raw["sampler"]["seed"] = arm_seed(cfg.sampler.seed, unit)
    # an arm's evaluation re-trains its best validation config with every seed (no references:
    # every other value of compare is an arm of its own; the baseline is the comparison's)
    raw["evaluate"] = raw["evaluate"] | {"top_n": 1, "references": False, "jobs": 1}
    return replace(build(raw, cfg.user, cfg.source), arm=arm, parent=cfg.name, repeat=repeat)


def arm_at(cfg: StudyConfig, unit: str) -> StudyConfig:
    """Where arm (or search repeat) ``unit`` of this comparison lives (its study's name, storage and
    folder), also for one this config no longer has: enough to find, count or set aside what it
    holds, not to run it."""
    arm, repeat = split_unit(unit)
    return replace(arm_config(cfg, cfg.arms[0]), name=f"{cfg.name}.{unit}", arm=arm, repeat=repeat)


def arm_configs(cfg: StudyConfig) -> list[StudyConfig]:
    """Every study the comparison runs: each arm's search repeats, arm by arm."""
    return [arm_config(cfg, u) for u in cfg.arm_units]


def members(cfg: StudyConfig, arm: str | None = None) -> list[StudyConfig]:
    """The studies that run trials: the study itself, one arm's study (``arm``: an arm, or a search
    repeat ``{arm}@r{r}``), or every arm's of a comparison."""
    if arm is not None:
        return [arm_config(cfg, arm)]
    return arm_configs(cfg) if cfg.compare is not None else [cfg]
