"""The report of a comparison (``compare:``): which arm is best on test, by how much, and is the
difference real; per dataset, and ranked across datasets."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.errors import HarnessError
from harness.report import figures as F
from harness.report.page import Page
from harness.report.tables import (
    contended,
    curves_frame,
    final_table,
    manifest_table,
    model_out_text,
    protocol_text,
    this_incarnation,
    trials_frame,
    weights_table,
    with_ci,
)
from harness.study.arms import arm_configs
from harness.study.config import COMPARE_BACKBONE, StudyConfig, config_warnings
from harness.study.final import BASELINE
from harness.study.identity import load_study, read_manifest, study_uid

ALPHA = 0.05


@dataclass
class ComparisonData:
    cfg: StudyConfig
    uid: str
    trials: pd.DataFrame  # every arm's trials, with its arm
    test: pd.DataFrame | None
    comparisons: pd.DataFrame | None
    arms: pd.DataFrame | None  # what each arm spent
    notes: list[str] = field(default_factory=list)

    @property
    def arm_names(self) -> list[str]:
        return list(self.cfg.arms)


def load_comparison(cfg: StudyConfig) -> ComparisonData:
    uid = study_uid(load_study(cfg))
    frames = []
    notes = [*config_warnings(cfg, read_manifest(cfg))]
    arm_uids = {}
    for a in arm_configs(cfg):
        study = load_study(a)
        arm_uids[str(a.arm)] = study_uid(study)
        if study.user_attrs.get("parent_uid") not in (None, uid):
            notes.append(f"arm {a.arm} belongs to an earlier incarnation of {cfg.name}; left out")
            continue
        try:
            frames.append(trials_frame(study, a).assign(arm=a.arm))
        except HarnessError:
            notes.append(f"arm {a.arm} has no trials yet")
    if not frames:
        raise HarnessError(f"comparison {cfg.name!r} has no trials in any arm; run the study first")
    trials = pd.concat(frames, ignore_index=True)
    if "contended" in trials and trials["contended"].any():
        notes.append(
            f"{int(trials['contended'].sum())} of {len(trials)} trials ran while the host's load exceeded its"
            " CPUs: their images/s measure the neighbours as much as the config"
        )
    test = this_incarnation(cfg.study_dir / "test.csv", uid, notes)
    comp = this_incarnation(cfg.study_dir / "comparisons.csv", uid, notes)
    arms = this_incarnation(cfg.study_dir / "arms.csv", uid, notes)
    stale = _stale_arms(test, arm_uids)
    if stale:  # its pairs and Holm families were computed with another incarnation of these arms
        notes.append(
            f"the evaluation in {cfg.study_dir / 'test.csv'} used an earlier incarnation of arm(s)"
            f" {', '.join(stale)} (re-created since), so it is left out: run 'harness evaluate' for this"
            " study (the other arms' runs are stored and reused)"
        )
        test = comp = arms = None
    return ComparisonData(cfg, uid, trials, test, comp, arms, notes)


def _stale_arms(test: pd.DataFrame | None, arm_uids: dict[str, str]) -> list[str]:
    """Arms whose row in test.csv names another arm uid than the arm's study now has (a test.csv
    written before arm uids were recorded cannot tell, and is taken as it is)."""
    if test is None or "arm_uid" not in test:
        return []
    rows = test[test["kind"] == "arm"]
    found = dict(zip(rows["arm"].astype(str), rows["arm_uid"].astype(str), strict=True))
    return [arm for arm, uid in arm_uids.items() if arm in found and found[arm] != uid]


# --- verdicts --------------------------------------------------------------------------------------


def verdict(d: ComparisonData) -> str:
    """One sentence from the intervals and the Holm-adjusted tests: the best arm on test, which arms
    it is distinguishable from, and where the baseline stands."""
    if d.test is None or d.comparisons is None:
        return "No final evaluation yet: run <code>harness evaluate</code>."
    arms = d.test[d.test["kind"] == "arm"].sort_values("test_recall@1", ascending=False)
    best = arms.iloc[0]
    r1 = d.comparisons[d.comparisons["metric"] == "recall@1"]
    pairs = r1[r1["family"] == "pair"]
    involving = pairs[(pairs["config"] == best["config"]) | (pairs["versus"] == best["config"])]
    beaten = [
        str(r["versus"] if r["config"] == best["config"] else r["config"])
        for _, r in involving.iterrows()
        if r["p_holm"] < ALPHA
    ]
    tied = [str(a) for a in arms["config"][1:] if a not in beaten]
    name = html.escape(str(best["config"]))
    head = (
        f"On <b>{html.escape(d.cfg.dataset)}</b>, <b>{name}</b> has the highest test R@1,"
        f" {with_ci(best, 'recall@1')}"
    )
    if not tied:
        body = f"; it is distinguishable from every other arm (Holm-adjusted p &lt; {ALPHA})"
    elif not beaten:
        body = (
            f"; no strategy is distinguishable from {name} at the 95 % level (Holm-adjusted paired t over"
            f" {int(best['n_seeds'])} seeds)"
        )
    else:
        body = (
            f"; it is distinguishable from {_names(beaten)} (Holm-adjusted p &lt; {ALPHA}), not from"
            f" {_names(tied)}"
        )
    return head + body + "." + _against_baseline(d, r1)


def _against_baseline(d: ComparisonData, r1: pd.DataFrame) -> str:
    vs = r1[r1["family"] == "vs baseline"]
    above = [str(r["config"]) for _, r in vs.iterrows() if r["low"] > 0 and r["p_holm"] < ALPHA]
    below = [str(r["config"]) for _, r in vs.iterrows() if r["high"] < 0 and r["p_holm"] < ALPHA]
    base = d.test[d.test["kind"] == "baseline"].iloc[0] if d.test is not None else None
    if base is None:
        return ""
    if d.cfg.compare == COMPARE_BACKBONE:  # each arm against its own backbone untrained
        head, parts = " Each arm against its own backbone without training:", []
    else:
        head, parts = "", [f" The untrained backbone scores {base['test_recall@1']:.4f}"]
    if above:
        parts.append(f"{_names(above)} {'is' if len(above) == 1 else 'are'} above it")
    if below:
        parts.append(f"{_names(below)} {'is' if len(below) == 1 else 'are'} below it")
    rest = len(vs) - len(above) - len(below)
    if rest:
        parts.append(f"{rest} arm{'s' if rest != 1 else ''} not distinguishable from it")
    online = r1[r1["family"] == "online vs offline"]
    text = (f"{head} " if head else "") + "; ".join(p.strip() if head else p for p in parts) + "."
    if not online.empty:
        o = online.iloc[0]
        side = "higher" if o["low"] > 0 else "lower" if o["high"] < 0 else "not distinguishable"
        text += (
            f" The best online arm by validation ({html.escape(str(o['config']))}) minus the best offline"
            f" ({html.escape(str(o['versus']))}): {o['difference']:+.4f} [{o['low']:+.4f}, {o['high']:+.4f}],"
            f" p = {o['p_value']:.3g}: {side}."
        )
    return text


def _names(items: list[str]) -> str:
    items = [f"<b>{html.escape(i)}</b>" for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# --- tables ----------------------------------------------------------------------------------------


def arm_table(test: pd.DataFrame) -> pd.DataFrame:
    """Arm x {R@1, MAP@R, R-Precision} with 95 % intervals, best first; the baseline and zero-shot
    rows first."""
    base = test[test["kind"].isin(["baseline", "zero-shot"])]
    arms = test[test["kind"] == "arm"].sort_values("test_recall@1", ascending=False)
    ordered = pd.concat([base, arms], ignore_index=True)
    out = pd.DataFrame({"arm": ordered["config"], "seeds": ordered["n_seeds"]})
    for m, name in (
        ("recall@1", "R@1 [95 % CI]"),
        ("map@r", "MAP@R [95 % CI]"),
        ("r_precision", "R-Prec [95 % CI]"),
    ):
        out[name] = [with_ci(r, m) for _, r in ordered.iterrows()]
    out["val R@1"] = ["–" if pd.isna(v) else f"{v:.4f}" for v in ordered.get("val_recall@1", np.nan)]
    return out


def comparison_table(comp: pd.DataFrame, metric: str = "recall@1") -> pd.DataFrame:
    c = comp[comp["metric"] == metric]
    out = pd.DataFrame(
        {
            "tests": c["family"],
            "arm": c["config"],
            "versus": c["versus"].replace({BASELINE: "baseline"}),
            "difference [95 % CI]": [
                f"{r['difference']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}]" for _, r in c.iterrows()
            ],
            "p": [_p(v) for v in c["p_value"]],
            "p (Holm)": [_p(v) for v in c["p_holm"]],
            "verdict": [
                ("higher" if r["low"] > 0 else "lower" if r["high"] < 0 else "tied")
                + ("" if r["p_holm"] < ALPHA else " (not significant after Holm)")
                if not (r["low"] <= 0 <= r["high"])
                else "not distinguishable"
                for _, r in c.iterrows()
            ],
        }
    )
    return out


def _p(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def budget_table(arms: pd.DataFrame) -> pd.DataFrame:
    out = arms.drop(columns=["study_uid"], errors="ignore")
    if "mean_epochs_run" in out:
        out["mean_epochs_run"] = [f"{v:.1f}" for v in out["mean_epochs_run"]]
    return out.rename(
        columns={
            "images_processed": "images processed",
            "best_val_r1": "best val R@1",
            "best_trial": "best trial",
            "mean_epochs_run": "mean epochs run",
        }
    )


def rank_frame(data: list[ComparisonData]) -> pd.DataFrame:
    """Each arm's test R@1 and its rank (1 = best) per dataset; the mean rank over datasets."""
    rows = []
    datasets = [d.cfg.dataset for d in data]
    for d in data:
        if d.test is None:
            continue
        label = d.cfg.dataset if datasets.count(d.cfg.dataset) == 1 else f"{d.cfg.dataset} ({d.cfg.name})"
        arms = d.test[d.test["kind"] == "arm"].copy()
        arms["rank"] = arms["test_recall@1"].rank(ascending=False, method="min")
        for _, r in arms.iterrows():
            rows.append(
                {
                    "dataset": label,
                    "study": d.cfg.name,
                    "arm": r["config"],
                    "rank": r["rank"],
                    "test_recall@1": r["test_recall@1"],
                    "test_recall@1_low": r["test_recall@1_low"],
                    "test_recall@1_high": r["test_recall@1_high"],
                }
            )
    return pd.DataFrame(rows)


def rank_table(ranks: pd.DataFrame) -> pd.DataFrame:
    wide = ranks.pivot_table(index="arm", columns="dataset", values="rank", aggfunc="min")
    wide.columns = [f"rank on {c}" for c in wide.columns]
    wide["mean rank"] = wide.mean(axis=1)
    out = wide.sort_values("mean rank").reset_index()
    out["mean rank"] = [f"{v:.2f}" for v in out["mean rank"]]  # not the metrics' 4 decimals
    return out


# --- the section -----------------------------------------------------------------------------------


def comparison_section(page: Page, d: ComparisonData, prefix: str, multi: bool) -> None:
    cfg = d.cfg
    if multi:
        page.h(2, f"Study {cfg.name}")
    folds = (
        f"{cfg.val_folds}-fold class-disjoint validation" if cfg.val_folds > 1 else "a validation carve-out"
    )
    page.p(
        f"{html.escape(cfg.description or '')}<br>Dataset <b>{html.escape(cfg.dataset)}</b>, backbone"
        f"{'s' if len(cfg.backbones) > 1 else ''} <b>{html.escape(', '.join(cfg.backbones))}</b>"
        f" ({html.escape(cfg.trunk)} trunk), {cfg.image_size}px,"
        f" {cfg.epochs} epochs. <b>{len(d.arm_names)} arms</b> of"
        f" <code>{html.escape(str(cfg.compare))}</code>,"
        f" each its own study with {cfg.budget.n_trials} trials, the same search space and {folds} on the"
        " training classes; each arm's best validation config was re-trained on all training classes with"
        f" {cfg.evaluate.seeds} seeds and scored once on the test classes.{protocol_text(cfg, d.test)}"
    )
    for note in d.notes:
        page.parts.append(f'<p class="note">Warning: {html.escape(note)}</p>')
    page.p(verdict(d))
    if d.test is not None:
        page.table(
            f"{prefix}arms-test",
            arm_table(d.test),
            "Test classes: each arm's best validation config, mean [95 % t-interval over seeds]; the"
            " baseline (the backbone without triplet training, one deterministic run): a bootstrap over"
            " test queries. The intervals cover re-training the chosen config with other seeds, not the"
            " search that chose it: another sampler seed can choose another config (docs: Comparing"
            " strategies, 'Is each arm's best stable'). R@2/4/8 and NMI are in the CSV.",
        )
        out = model_out_text(d.test, page.out_dir, d.cfg.tracking_uri)
        if out:
            page.p(out)
        weights = weights_table(d.test)
        if weights is not None:
            page.table(
                f"{prefix}weights",
                weights,
                "The weights behind every row: each arm's backbone as it was trained from, and each"
                " untrained (zero-shot) backbone, with its input normalisation.",
            )
        page.figure(
            f"{prefix}arms-r1",
            "Test Recall@1 per arm",
            "Mean and 95 % interval over seeds; grey dotted line: the no-training baseline.",
            F.final_recall(d.test.assign(kind=d.test["kind"].replace({"arm": "top"}))),
        )
    if d.comparisons is not None:
        page.figure(
            f"{prefix}pairwise",
            "Pairwise differences in test Recall@1",
            f"Row minus column, mean over the same seeds; * where the Holm-adjusted paired t-test gives"
            f" p < {ALPHA}.",
            F.pairwise_matrix(d.comparisons, d.arm_names),
        )
        page.table(
            f"{prefix}arm-comparisons",
            comparison_table(d.comparisons),
            "Test R@1 differences: every pair of arms (paired t over seeds), every arm against the"
            " baseline (one-sample t over the seeds' differences), and the best online against the best"
            " offline arm (both chosen by validation R@1). p: raw; p (Holm): adjusted within each family"
            " of tests. MAP@R rows are in the CSV.",
        )
    _search(page, d, prefix, multi)


def _search(page: Page, d: ComparisonData, prefix: str, multi: bool) -> None:
    page.h(3 if multi else 2, "Search, per arm")
    if d.arms is not None:
        page.table(
            f"{prefix}budgets",
            budget_table(d.arms),
            "What each arm used: its trials (complete, pruned, failed) and the images they processed"
            " (offline mining's whole-set passes included).",
        )
    trials = d.trials
    page.figure(
        f"{prefix}sensitivity-margin",
        "Validation R@1 against margin, per arm",
        "Every trial a point; the line joins the arm's mean in each fifth of the margin range.",
        F.sensitivity(trials, "margin"),
    )
    page.figure(
        f"{prefix}best-so-far",
        "Each arm's best validation R@1 as its trials come in",
        "A line flat at its end: that arm's last trials found nothing better.",
        F.best_so_far(trials),
    )
    done = trials[trials["state"] == "COMPLETE"]
    page.figure(
        f"{prefix}r1_by_mining_distance",
        "Validation R@1 by mining × distance",
        f"Complete trials; a box only where a cell has {F.MIN_BOX} or more.",
        F.r1_by_mining_distance(done),
    )
    page.figure(
        f"{prefix}compute_curves",
        "Validation R@1 vs images processed",
        "Offline vs online mining at equal compute (offline: whole-set mining passes included).",
        F.compute_curves(curves_frame(trials)),
    )
    if d.test is not None:
        page.table(
            f"{prefix}chosen",
            final_table(d.test[d.test["kind"] == "arm"], d.cfg.trunk),
            "The config each arm chose on validation classes (its best complete trial).",
        )
    man = manifest_table(d.cfg)
    if man is not None:
        table, m = man
        page.table(
            f"{prefix}manifest",
            table,
            f"Split manifest {m['hash']}: class-disjoint; validation classes carved from the train classes"
            f" with seed {m['seed']}.",
        )


__all__ = ["ComparisonData", "comparison_section", "contended", "load_comparison", "rank_frame", "rank_table"]
