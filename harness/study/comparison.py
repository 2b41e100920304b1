"""A comparison's evaluation (``compare:``): every arm's best validation config, re-trained with the
same seeds on all training classes and scored once on the test classes, against each other, against
the no-training baseline (with ``compare: backbone``: each arm against its own backbone untrained),
and the best online arm against the best offline one.

Each arm chooses its config on validation classes only (its best complete trial); the test classes
are read here for the first time. Results under ``results/{study}/``:

- ``test_runs.csv``: one row per (arm, seed), and the baseline;
- ``test.csv``: per arm, the mean and 95 % t-interval over seeds of R@1/2/4/8, MAP@R, R-Precision and
  NMI, with the config it chose; the baseline first;
- ``comparisons.csv``: every pair of arms (paired t over seeds), each arm against the baseline (a
  one-sample t over the seeds' differences: the baseline is one deterministic run), and the best
  online against the best offline arm (chosen by validation R@1), for R@1 and MAP@R: mean
  difference, its 95 % interval, the raw p and the Holm-adjusted p within each family of tests;
- ``arms.csv``: what each arm spent: trials complete / pruned / failed, and images processed
  (offline mining's whole-set passes counted).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from itertools import combinations

import numpy as np
import pandas as pd
from optuna.trial import TrialState

from harness.errors import HarnessError
from harness.evaluation.stats import holm
from harness.params import is_offline
from harness.study.arms import arm_config, arm_configs
from harness.study.config import COMPARE_BACKBONE, StudyConfig
from harness.study.final import (
    BASELINE,
    COMPARED,
    Evaluator,
    Unit,
    compare_configs,
    evaluation_units,
    model_of,
    plan,
    run_units,
    summary_row,
    weights_of,
    write_csv,
    zero_shot_label,
)
from harness.study.identity import load_study, study_uid
from harness.study.sampler import draws

log = logging.getLogger(__name__)
Results = dict[str, tuple[dict, dict[str, np.ndarray]]]


def evaluate_arm(cfg: StudyConfig, arm: str) -> pd.DataFrame:
    """Re-train one arm's best validation config with every seed (one Snakemake job per arm); its
    ``test_runs.csv`` marks it done."""
    a = arm_config(cfg, arm)
    ev = Evaluator(a)
    results = run_units(a, evaluation_units(a), ev)
    rows = pd.DataFrame([results[u.key][0] for u in plan(a, ev.study)]).assign(arm=arm, study_uid=ev.uid)
    write_csv(rows, a.study_dir / "test_runs.csv")
    return rows


def evaluate_comparison(cfg: StudyConfig) -> pd.DataFrame:
    """Run what is missing (the baseline, any arm's units), then write the comparison's tables."""
    load_study(cfg)  # first: the comparison's record accepts this config and has every arm
    check_comparable(cfg)
    ev = Evaluator(cfg)
    untrained = {u.key: u for u in plan(cfg, ev.study)}  # the baseline, then each zero-shot backbone
    done = run_units(cfg, list(untrained), ev)
    by_seed: dict[str, list[dict]] = {u.label: [done[k][0]] for k, u in untrained.items()}
    queries: dict[str, list[dict]] = {u.label: [done[k][1]] for k, u in untrained.items()}
    kinds = {u.label: (u.kind, u.backbone or cfg.backbone) for u in untrained.values()}
    chosen: dict[str, Unit] = {}
    for a in arm_configs(cfg):
        arm_ev = Evaluator(a)
        units = plan(a, arm_ev.study)
        results = run_units(a, [u.key for u in units], arm_ev)
        by_seed[str(a.arm)] = [results[u.key][0] | {"arm": a.arm, "arm_uid": arm_ev.uid} for u in units]
        queries[str(a.arm)] = [results[u.key][1] for u in units]
        chosen[str(a.arm)] = units[0]
    summary = _summary(cfg, chosen, by_seed, queries, kinds)
    comparisons = _comparisons(cfg, chosen, by_seed, queries)
    uid = ev.uid
    runs = [row for rows in by_seed.values() for row in rows]
    write_csv(pd.DataFrame(runs).assign(study_uid=uid), cfg.study_dir / "test_runs.csv")
    write_csv(comparisons.assign(study_uid=uid), cfg.study_dir / "comparisons.csv")
    write_csv(arm_budgets(cfg).assign(study_uid=uid), cfg.study_dir / "arms.csv")
    write_csv(summary.assign(study_uid=uid), cfg.study_dir / "test.csv")  # last: marks the step done
    for name in ("test_runs.csv", "comparisons.csv", "arms.csv"):
        ev.tracker.log_file(ev.parent, cfg.study_dir / name, "evaluation")
    return summary


def _summary(
    cfg: StudyConfig,
    chosen: dict[str, Unit],
    by_seed: dict[str, list[dict]],
    queries: dict[str, list[dict]],
    untrained: dict[str, tuple[str, str]],
) -> pd.DataFrame:
    """The baseline and zero-shot rows (``untrained``: label -> kind, backbone), then one per arm."""
    rows = [
        summary_row(label, kind, by_seed[label], queries[label], cfg)
        | {"backbone": backbone, "epochs": 0}
        | weights_of(by_seed[label])
        for label, (kind, backbone) in untrained.items()
    ]
    for arm, u in chosen.items():
        row = summary_row(arm, "arm", by_seed[arm], queries[arm], cfg)
        row |= {"arm": arm, "arm_uid": by_seed[arm][0]["arm_uid"], "backbone": arm_config(cfg, arm).backbone}
        row |= weights_of(by_seed[arm]) | model_of(by_seed[arm])
        row |= {"family": "offline" if is_offline(arm) else "online"}
        row |= {"trial": u.trial, "draw": u.draw, "val_recall@1": u.val_r1, "epochs": u.epochs}
        if u.params is not None:
            row |= asdict(u.params)
        rows.append(row)
    return pd.DataFrame(rows)


def _comparisons(
    cfg: StudyConfig, chosen: dict[str, Unit], by_seed: dict[str, list[dict]], queries: dict[str, list[dict]]
) -> pd.DataFrame:
    """Three families of tests, each Holm-adjusted on its own (per metric): every pair of arms; every
    arm against the baseline; the best online arm (by validation R@1) against the best offline."""
    families: list[tuple[str, list[tuple[str, str]]]] = [
        ("pair", list(combinations(chosen, 2))),
        ("vs baseline", [(a, _untrained_of(cfg, a)) for a in chosen]),
    ]
    if cfg.compare == "mining":
        online = [a for a in chosen if not is_offline(a)]
        offline = [a for a in chosen if is_offline(a)]
        if online and offline:  # each chosen on validation, like every config here
            pick = [max(group, key=lambda a: chosen[a].val_r1) for group in (online, offline)]
            families.append(("online vs offline", [(pick[0], pick[1])]))
    rows = []
    for family, pairs in families:
        part = [
            c | {"family": family} for a, b in pairs for c in compare_configs(a, b, by_seed, queries, cfg)
        ]
        for metric in COMPARED:
            mine = [r for r in part if r["metric"] == metric]
            for r, adjusted in zip(mine, holm([r["p_value"] for r in mine]), strict=True):
                r["p_holm"] = float(adjusted)
        rows += part
    return pd.DataFrame(rows)


def _untrained_of(cfg: StudyConfig, arm: str) -> str:
    """What an arm is tested against: the baseline; with compare: backbone, its own backbone untrained."""
    return zero_shot_label(cfg, arm) if cfg.compare == COMPARE_BACKBONE else BASELINE


def arm_budgets(cfg: StudyConfig) -> pd.DataFrame:
    """What each arm really used: its trials by state and the images they processed."""
    rows = []
    for a in arm_configs(cfg):
        study = load_study(a)
        trials = study.get_trials(deepcopy=False)
        states = [t.state for t in trials]
        scored = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        draw = draws(study)
        best = min(  # ties to the earlier draw, as evaluate's choice
            (t for t in trials if t.state == TrialState.COMPLETE and t.value is not None),
            key=lambda t: (-float(t.value or 0.0), draw[t.number]),
            default=None,
        )
        rows.append(
            {
                "arm": a.arm,
                "arm_uid": study_uid(study),
                "trials": len(trials),
                "complete": states.count(TrialState.COMPLETE),
                "pruned": states.count(TrialState.PRUNED),
                "failed": states.count(TrialState.FAIL),
                "images_processed": float(sum(t.user_attrs.get("images_processed", 0.0) for t in trials)),
                "best_val_r1": None if best is None else float(best.value or 0.0),
                "best_trial": None if best is None else best.number,
                "best_draw": None if best is None else draw[best.number],
                "mean_epochs_run": float(np.mean([t.user_attrs.get("epochs_run", np.nan) for t in scored]))
                if scored
                else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def check_comparable(cfg: StudyConfig) -> None:
    """Every arm has a complete trial (else its evaluation has nothing to re-train)."""
    empty = [a.arm for a in arm_configs(cfg) if not _complete(a)]
    if empty:
        raise HarnessError(
            f"study {cfg.name!r}: arm(s) {', '.join(map(str, empty))} have no complete trial yet; run the"
            " study (every arm) first"
        )


def _complete(a: StudyConfig) -> bool:
    return any(t.state == TrialState.COMPLETE for t in load_study(a).get_trials(deepcopy=False))
