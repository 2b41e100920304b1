"""What each step of the pipeline runs, for a study or a comparison (``compare:``) alike: the one
function a Snakemake rule script or a CLI command calls. A comparison's arms are studies of their
own; these functions fan out to them, or to the one named by ``arm``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.study.comparison import evaluate_arm, evaluate_comparison
from harness.study.config import StudyConfig
from harness.study.final import baseline_units, evaluate_shard, evaluate_study, run_units
from harness.study.identity import checked_members, settle_parent
from harness.study.worker import run_worker_group


def work(
    cfg: StudyConfig,
    config_path: str | Path,
    worker: int = 0,
    threads: int | None = None,
    arm: str | None = None,
) -> int:
    """Run trials until the budget is met: the study's, one arm's, or (no ``arm``) every arm's in
    turn. Returns the trials the study (or the last arm) has finished."""
    return [run_worker_group(m, config_path, worker, threads) for m in checked_members(cfg, arm)][-1]


def evaluate(cfg: StudyConfig, shard: int | None = None, arm: str | None = None) -> pd.DataFrame | None:
    """The final evaluation: one shard of a study, one arm of a comparison, or the whole of either
    (its missing runs, then its tables; returns ``test.csv``'s frame)."""
    if arm is not None:
        (a,) = checked_members(cfg, arm)  # the comparison accepts this config and has every arm
        evaluate_arm(cfg, arm)
        settle_parent(a)
        return None
    if shard is not None:
        evaluate_shard(cfg, shard)
        return None
    df = evaluate_comparison(cfg) if cfg.compare is not None else evaluate_study(cfg)
    settle_parent(cfg)  # evaluated: FINISHED where the budget is met and no worker is alive
    return df


def evaluate_baseline(cfg: StudyConfig) -> None:
    """The backbone without triplet training on the test classes, and every zero-shot backbone (one
    job; the gather reuses them)."""
    run_units(cfg, baseline_units(cfg))
