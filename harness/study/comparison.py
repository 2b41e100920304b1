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
import optuna
import pandas as pd
from optuna.trial import TrialState

from harness.errors import HarnessError
from harness.evaluation import repeats
from harness.evaluation.stats import holm
from harness.params import is_offline
from harness.study import identity
from harness.study.arms import arm_config, arm_configs
from harness.study.config import COMPARE_BACKBONE, StudyConfig, split_unit, unit_name
from harness.study.final import (
    BASELINE,
    COMPARED,
    METRICS,
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
from harness.study.identity import images_spent, load_study, study_uid
from harness.study.sampler import draws

log = logging.getLogger(__name__)
Results = dict[str, tuple[dict, dict[str, np.ndarray]]]


def evaluate_arm(cfg: StudyConfig, arm: str) -> pd.DataFrame:
    """Re-train one arm's (one search repeat's, ``{arm}@r{r}``) best validation config with every
    seed (one Snakemake job each); its ``test_runs.csv`` marks it done."""
    a = arm_config(cfg, arm)
    ev = Evaluator(a)
    results = run_units(a, evaluation_units(a), ev)
    rows = pd.DataFrame([results[u.key][0] for u in plan(a, ev.study)])
    rows = rows.assign(arm=a.arm, repeat=a.repeat, unit=a.unit, study_uid=ev.uid)
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
    chosen: dict[str, Unit] = {}  # per arm's study: each search repeat of each arm
    for a in arm_configs(cfg):
        arm_ev = Evaluator(a)
        units = plan(a, arm_ev.study)
        results = run_units(a, [u.key for u in units], arm_ev)
        unit = str(a.unit)
        extra = {"arm": a.arm, "repeat": a.repeat, "unit": unit, "arm_uid": arm_ev.uid}
        by_seed[unit] = [results[u.key][0] | extra for u in units]
        queries[unit] = [results[u.key][1] for u in units]
        chosen[unit] = units[0]
    if cfg.search_repeats == 1:
        summary = _summary(cfg, chosen, by_seed, queries, kinds)
        comparisons = _comparisons(cfg, chosen, by_seed, queries)
    else:
        summary = _repeated_summary(cfg, chosen, by_seed, queries, kinds)
        comparisons = _repeated_comparisons(cfg, chosen, by_seed)
    searches = search_table(cfg, chosen, by_seed)
    agreement = agreement_table(searches)
    uid = ev.uid
    runs = [row for rows in by_seed.values() for row in rows]
    write_csv(pd.DataFrame(runs).assign(study_uid=uid), cfg.study_dir / "test_runs.csv")
    write_csv(comparisons.assign(study_uid=uid), cfg.study_dir / "comparisons.csv")
    write_csv(arm_budgets(cfg).assign(study_uid=uid), cfg.study_dir / "arms.csv")
    write_csv(searches.assign(study_uid=uid), cfg.study_dir / "searches.csv")
    write_csv(agreement.assign(study_uid=uid), cfg.study_dir / "agreement.csv")
    write_csv(summary.assign(study_uid=uid), cfg.study_dir / "test.csv")  # last: marks the step done
    for name in ("test_runs.csv", "comparisons.csv", "arms.csv", "searches.csv", "agreement.csv"):
        ev.tracker.log_file(ev.parent, cfg.study_dir / name, "evaluation")
    return summary


def _untrained_rows(
    cfg: StudyConfig, by_seed: dict[str, list[dict]], queries: dict[str, list[dict]], untrained: dict
) -> list[dict]:
    """The baseline and zero-shot rows (``untrained``: label -> kind, backbone)."""
    return [
        summary_row(label, kind, by_seed[label], queries[label], cfg)
        | {"backbone": backbone, "epochs": 0}
        | weights_of(by_seed[label])
        for label, (kind, backbone) in untrained.items()
    ]


def _summary(
    cfg: StudyConfig,
    chosen: dict[str, Unit],
    by_seed: dict[str, list[dict]],
    queries: dict[str, list[dict]],
    untrained: dict[str, tuple[str, str]],
) -> pd.DataFrame:
    """The baseline and zero-shot rows, then one per arm (one search each)."""
    rows = _untrained_rows(cfg, by_seed, queries, untrained)
    for arm, u in chosen.items():
        rows.append(
            _arm_row(cfg, arm, u, by_seed[arm], summary_row(arm, "arm", by_seed[arm], queries[arm], cfg))
        )
    return pd.DataFrame(rows)


def _arm_row(cfg: StudyConfig, arm: str, u: Unit, runs: list[dict], row: dict) -> dict:
    """An arm's row: its metrics (``row``), then its chosen config's (``u``, trained as ``runs``)."""
    row |= {"arm": arm, "arm_uid": runs[0]["arm_uid"], "backbone": arm_config(cfg, arm).backbone}
    row |= weights_of(runs) | model_of(runs)
    row |= {"family": "offline" if is_offline(arm) else "online"}
    row |= {"trial": u.trial, "draw": u.draw, "val_recall@1": u.val_r1, "epochs": u.epochs}
    if u.params is not None:
        row |= asdict(u.params)
    return row


def _by_arm(cfg: StudyConfig) -> dict[str, list[str]]:
    """Each arm's search repeats (unit names), in repeat order."""
    return {arm: [unit_name(arm, r) for r in range(cfg.search_repeats)] for arm in cfg.arms}


def _values(cfg: StudyConfig, chosen: dict[str, Unit], by_seed: dict[str, list[dict]], m: str) -> dict:
    """Per arm, the (repeats, seeds) array of test metric ``m``."""
    return {
        arm: np.array([[r[f"test_{m}"] for r in by_seed[u]] for u in units])
        for arm, units in _by_arm(cfg).items()
    }


def _repeated_summary(
    cfg: StudyConfig,
    chosen: dict[str, Unit],
    by_seed: dict[str, list[dict]],
    queries: dict[str, list[dict]],
    untrained: dict[str, tuple[str, str]],
) -> pd.DataFrame:
    """With search repeats: per arm, each metric's mean over repeats x seeds with the mixed model's
    interval (``harness.evaluation.repeats``) and the within-search interval beside it, and the
    probability that it ranks first by R@1. Its config columns are its best repeat's by validation
    (``repeat`` says which; ``searches.csv`` has every repeat's)."""
    rows = _untrained_rows(cfg, by_seed, queries, untrained)
    values = {m: _values(cfg, chosen, by_seed, m) for m in METRICS}
    # a metric not measured (NaN: NMI without its sample) stays NaN
    fits = {m: repeats.fit(v) for m, v in values.items() if all(np.isfinite(x).all() for x in v.values())}
    first = repeats.rank_first(fits["recall@1"], seed=cfg.evaluate.seed)
    for arm, units in _by_arm(cfg).items():
        pick = min(units, key=lambda u: (-chosen[u].val_r1, units.index(u)))
        row: dict = {"config": arm, "kind": "arm", "n_seeds": cfg.evaluate.seeds}
        row |= {"n_repeats": cfg.search_repeats, "interval": repeats.METHOD}
        for m, c in fits.items():
            ci, within = repeats.arm_interval(c, arm), repeats.within_interval(c, arm)
            row |= {f"test_{m}": ci.mean, f"test_{m}_low": ci.low, f"test_{m}_high": ci.high}
            row |= {f"test_{m}_within_low": within.low, f"test_{m}_within_high": within.high}
        row |= {f"test_{m}{end}": np.nan for m in METRICS if m not in fits for end in ("", "_low", "_high")}
        row |= {"p_rank1": first[arm], "var_search_recall@1": fits["recall@1"].var_search}
        row |= {"var_seed_recall@1": fits["recall@1"].var_seed}
        row = _arm_row(cfg, arm, chosen[pick], by_seed[pick], row)
        row |= {"repeat": split_unit(pick)[1], "unit": pick}
        row["val_recall@1_mean"] = float(np.mean([chosen[u].val_r1 for u in units]))
        rows.append(row)
    return pd.DataFrame(rows)


def _repeated_comparisons(
    cfg: StudyConfig, chosen: dict[str, Unit], by_seed: dict[str, list[dict]]
) -> pd.DataFrame:
    """The families of ``_comparisons``, tested with the search's variance (the mixed model's pooled
    between-repeat mean square), each Holm-adjusted on its own per metric."""
    val = {arm: float(np.mean([chosen[u].val_r1 for u in units])) for arm, units in _by_arm(cfg).items()}
    rows = []
    for family, pairs in _families(cfg, list(cfg.arms), val):
        part = []
        for metric in COMPARED:
            c = repeats.fit(_values(cfg, chosen, by_seed, metric))
            for a, b in pairs:
                t = (
                    repeats.difference(c, a, b)
                    if b in c.means
                    else repeats.against(c, a, float(by_seed[b][0][f"test_{metric}"]))
                )
                part.append(
                    {"config": a, "versus": b, "metric": metric, "difference": t.diff, "low": t.low}
                    | {"high": t.high, "p_value": t.p_value, "n": t.n, "method": t.method, "family": family}
                )
        rows += _holm(part)
    return pd.DataFrame(rows)


def _families(
    cfg: StudyConfig, arms: list[str], val: dict[str, float]
) -> list[tuple[str, list[tuple[str, str]]]]:
    """Three families of tests: every pair of arms; every arm against the baseline (with compare:
    backbone, its own backbone untrained); the best online arm (by validation R@1) against the
    best offline."""
    families: list[tuple[str, list[tuple[str, str]]]] = [
        ("pair", list(combinations(arms, 2))),
        ("vs baseline", [(a, _untrained_of(cfg, a)) for a in arms]),
    ]
    if cfg.compare == "mining":
        online = [a for a in arms if not is_offline(a)]
        offline = [a for a in arms if is_offline(a)]
        if online and offline:  # each chosen on validation, like every config here
            pick = [max(group, key=lambda a: val[a]) for group in (online, offline)]
            families.append(("online vs offline", [(pick[0], pick[1])]))
    return families


def _holm(part: list[dict]) -> list[dict]:
    """Holm within one family, per metric."""
    for metric in COMPARED:
        mine = [r for r in part if r["metric"] == metric]
        for r, adjusted in zip(mine, holm([r["p_value"] for r in mine]), strict=True):
            r["p_holm"] = float(adjusted)
    return part


def search_table(cfg: StudyConfig, chosen: dict[str, Unit], by_seed: dict[str, list[dict]]) -> pd.DataFrame:
    """One row per arm and search repeat: the config the repeat chose on validation, its validation
    R@1, and its test metrics' mean over the evaluation seeds (what the stability figure and the
    validation-test agreement read)."""
    rows = []
    for unit, u in chosen.items():
        arm, repeat = split_unit(unit)
        runs = by_seed[unit]
        row = {"arm": arm, "repeat": repeat, "unit": unit, "arm_uid": runs[0]["arm_uid"]}
        row |= {"trial": u.trial, "draw": u.draw, "val_recall@1": u.val_r1, "n_seeds": len(runs)}
        row |= {f"test_{m}": float(np.mean([r[f"test_{m}"] for r in runs])) for m in METRICS}
        row |= {f"test_recall@1_seed{i}": r["test_recall@1"] for i, r in enumerate(runs)}
        if u.params is not None:
            row |= asdict(u.params)
        rows.append(row)
    return pd.DataFrame(rows)


def agreement_table(searches: pd.DataFrame) -> pd.DataFrame:
    """Do validation and test order the same way? Spearman's rho between validation R@1 and test R@1:
    over the arms (each arm's mean over its repeats), over every repeat of every arm, and within
    each arm over its repeats (how often the repeat validation preferred also tested higher)."""
    per_arm = searches.groupby("arm", sort=False)[["val_recall@1", "test_recall@1"]].mean()
    rows = []
    for over, frame in (("arms", per_arm), ("searches", searches)):
        rho, p, n = repeats.rank_agreement(list(frame["val_recall@1"]), list(frame["test_recall@1"]))
        rows.append({"over": over, "spearman_rho": rho, "p_value": p, "n": n})
    pairs = agree = 0
    for _, g in searches.groupby("arm", sort=False):
        for (_, x), (_, y) in combinations(g.iterrows(), 2):
            if x["val_recall@1"] != y["val_recall@1"] and x["test_recall@1"] != y["test_recall@1"]:
                pairs += 1
                agree += (x["val_recall@1"] > y["val_recall@1"]) == (x["test_recall@1"] > y["test_recall@1"])
    rows.append(
        {"over": "repeat pairs within arms", "spearman_rho": np.nan, "p_value": np.nan, "n": pairs}
        | {"concordant": agree}
    )
    return pd.DataFrame(rows)


def _comparisons(
    cfg: StudyConfig, chosen: dict[str, Unit], by_seed: dict[str, list[dict]], queries: dict[str, list[dict]]
) -> pd.DataFrame:
    """One search per arm: the families of ``_families``, paired t over seeds (a bootstrap over
    queries with one seed), each Holm-adjusted on its own per metric."""
    rows = []
    for family, pairs in _families(cfg, list(chosen), {a: u.val_r1 for a, u in chosen.items()}):
        rows += _holm(
            [c | {"family": family} for a, b in pairs for c in compare_configs(a, b, by_seed, queries, cfg)]
        )
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
                "repeat": a.repeat,
                "arm_uid": study_uid(study),
                "trials": len(trials),
                "complete": states.count(TrialState.COMPLETE),
                "pruned": states.count(TrialState.PRUNED),
                "failed": states.count(TrialState.FAIL),
                "images_processed": images_spent(study),
                "budget_held": budget_held(a, study),
                "best_val_r1": None if best is None else float(best.value or 0.0),
                "best_trial": None if best is None else best.number,
                "best_draw": None if best is None else draw[best.number],
                "mean_epochs_run": float(np.mean([t.user_attrs.get("epochs_run", np.nan) for t in scored]))
                if scored
                else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def budget_held(a: StudyConfig, study: optuna.Study) -> str:
    """Which limit ended the arm's search: images, n_trials, or (neither met) timeout."""
    return identity.budget_held(a, study) or ("timeout" if a.budget.timeout is not None else "not met")


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
