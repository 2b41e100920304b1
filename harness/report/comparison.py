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
    param_columns,
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
    searches: pd.DataFrame | None = None  # each search (arm x repeat): its choice, val and test R@1
    agreement: pd.DataFrame | None = None  # validation vs test rank correlations
    notes: list[str] = field(default_factory=list)

    @property
    def repeated(self) -> bool:
        """Each arm searched more than once: intervals and tests cover the search."""
        return self.cfg.search_repeats > 1

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
        arm_uids[str(a.unit)] = study_uid(study)
        if study.user_attrs.get("parent_uid") not in (None, uid):
            notes.append(f"arm {a.unit} belongs to an earlier incarnation of {cfg.name}; left out")
            continue
        try:
            frame = trials_frame(study, a).assign(arm=a.arm)
            frames.append(frame.assign(search=a.unit) if cfg.search_repeats > 1 else frame)
        except HarnessError:
            notes.append(f"arm {a.unit} has no trials yet")
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
    searches = this_incarnation(cfg.study_dir / "searches.csv", uid, notes)
    agreement = this_incarnation(cfg.study_dir / "agreement.csv", uid, notes)
    stale = _stale_arms(searches if searches is not None and "unit" in searches else test, arm_uids)
    if stale:  # its pairs and Holm families were computed with another incarnation of these arms
        notes.append(
            f"the evaluation in {cfg.study_dir / 'test.csv'} used an earlier incarnation of arm(s)"
            f" {', '.join(stale)} (re-created since), so it is left out: run 'harness evaluate' for this"
            " study (the other arms' runs are stored and reused)"
        )
        test = comp = arms = searches = agreement = None
    return ComparisonData(cfg, uid, trials, test, comp, arms, searches, agreement, notes)


def _stale_arms(test: pd.DataFrame | None, arm_uids: dict[str, str]) -> list[str]:
    """Arms (searches) whose row in searches.csv (or test.csv) names another arm uid than the arm's
    study now has (a test.csv written before arm uids were recorded cannot tell, and is taken as it
    is)."""
    if test is None or "arm_uid" not in test:
        return []
    rows = test[test["kind"] == "arm"] if "kind" in test else test
    names = rows["unit"] if "unit" in rows else rows["arm"]
    found = dict(zip(names.astype(str), rows["arm_uid"].astype(str), strict=True))
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
        body = f"; no strategy is distinguishable from {name} at the 95 % level ({_tested(d, best)})"
    else:
        body = (
            f"; it is distinguishable from {_names(beaten)} (Holm-adjusted p &lt; {ALPHA}), not from"
            f" {_names(tied)}"
        )
    return head + body + "." + _against_baseline(d, r1) + _rank_first(d)


def _tested(d: ComparisonData, best: pd.Series) -> str:
    if d.repeated:
        return (
            f"Holm-adjusted t over {d.cfg.search_repeats} searches x {int(best['n_seeds'])} seeds per arm,"
            " the search's own variance included"
        )
    return f"Holm-adjusted paired t over {int(best['n_seeds'])} seeds"


def _rank_first(d: ComparisonData) -> str:
    """With search repeats: how often each arm would come out first in a re-run of the protocol."""
    if d.test is None or "p_rank1" not in d.test:
        return ""
    arms = d.test[d.test["kind"] == "arm"].sort_values("p_rank1", ascending=False)
    top = [
        f"<b>{html.escape(str(r['config']))}</b> {r['p_rank1']:.0%}"
        for _, r in arms.iterrows()
        if r["p_rank1"] >= 0.05
    ]
    return (
        f" Run again (new searches, new seeds), the arm first on test R@1 would be: {', '.join(top)}"
        " (P(rank 1), a parametric bootstrap of the fitted variance components)."
    )


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
    if "n_repeats" in ordered:  # search repeats: the intervals cover the search; beside them, the seeds'
        out = out.rename(columns={"seeds": "searches x seeds"})
        out["searches x seeds"] = [
            f"{int(s)}" if pd.isna(r) else f"{int(r)} x {int(s)}"
            for r, s in zip(ordered["n_repeats"], ordered["n_seeds"], strict=True)
        ]
        out.insert(
            3,
            "R@1 within-search [95 % CI]",
            [
                "–"
                if pd.isna(r.get("test_recall@1_within_low"))
                else f"[{r['test_recall@1_within_low']:.4f}, {r['test_recall@1_within_high']:.4f}]"
                for _, r in ordered.iterrows()
            ],
        )
        out.insert(4, "P(rank 1)", ["–" if pd.isna(v) else f"{v:.0%}" for v in ordered["p_rank1"]])
        out["val R@1"] = [
            "–" if pd.isna(v) else f"{v:.4f}"
            for v in ordered.get("val_recall@1_mean", ordered["val_recall@1"])
        ]
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
            "budget_held": "budget held",
        }
    )


def spent_text(arms: pd.DataFrame) -> str:
    """Which budget ended the searches, and how far apart in images processed they ended."""
    if arms.empty or "images_processed" not in arms:
        return ""
    name = arms["arm"].astype(str)
    if "repeat" in arms and (arms["repeat"] > 0).any():
        name = name + arms["repeat"].map(lambda r: f", search {int(r) + 1}")
    lo, hi = arms["images_processed"].idxmin(), arms["images_processed"].idxmax()
    low, high = float(arms.at[lo, "images_processed"]), float(arms.at[hi, "images_processed"])
    ratio = f" ({high / low:.2f}x)" if low > 0 else ""
    spread = f" Images processed ranged from {low:,.0f} ({name[lo]}) to {high:,.0f} ({name[hi]}){ratio}."
    if "budget_held" not in arms:
        return spread
    held = arms["budget_held"].value_counts()
    n = len(arms)
    said = (
        f"{held.index[0]}, for all {n} searches"
        if len(held) == 1
        else ", ".join(f"{k} for {v} of {n} searches" for k, v in held.items())
    )
    return f" The budget that ended the searches: {said}." + spread


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
        f" each its own study with {budget_text(cfg)}, the same search space and {folds} on the"
        f" training classes{searches_text(cfg)}; each {'search' if d.repeated else 'arm'}'s best validation"
        f" config was re-trained on all training classes with {cfg.evaluate.seeds} seeds and scored once on"
        f" the test classes.{protocol_text(cfg, d.test)}"
    )
    for note in d.notes:
        page.parts.append(f'<p class="note">Warning: {html.escape(note)}</p>')
    page.p(verdict(d))
    if d.test is not None:
        page.table(
            f"{prefix}arms-test",
            arm_table(d.test),
            ARM_CAPTION_REPEATED if d.repeated else ARM_CAPTION,
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
    _repeats(page, d, prefix)
    _search(page, d, prefix, multi)


ARM_CAPTION = (
    "Test classes: each arm's best validation config, mean [95 % t-interval over seeds]; the baseline (the"
    " backbone without triplet training, one deterministic run): a bootstrap over test queries. The"
    " intervals cover re-training the chosen config with other seeds, not the search that chose it:"
    " another sampler seed can choose another config (set search_repeats: 2 or more to cover it)."
    " R@2/4/8 and NMI are in the CSV."
)
ARM_CAPTION_REPEATED = (
    "Test classes: each arm searched several times (independent sampler streams), each search's best"
    " validation config re-trained with the same seeds. Mean over searches x seeds [95 % interval of the"
    " mixed model y = arm + search + seed, its variance components pooled over the arms: it covers the"
    " search's own randomness]; beside it the within-search interval, what the seeds alone say (a single"
    " search's report). P(rank 1): how often the arm comes out first on test R@1 in a re-run of the"
    " protocol simulated from the fitted components. val R@1: the mean over the arm's searches of the"
    " best validation R@1 each found. The baseline: a bootstrap over test queries."
)


def budget_text(cfg: StudyConfig) -> str:
    """The per-arm budget, as the config set it."""
    b = cfg.budget
    parts = [f"{b.n_trials} trials"] if b.n_trials else []
    if b.images:
        parts.append(f"{b.images:,.0f} images processed")
    if b.timeout:
        parts.append(f"{b.timeout:,.0f} s per worker")
    return (" or ".join(parts) + " (whichever came first)") if len(parts) > 1 else parts[0]


def searches_text(cfg: StudyConfig) -> str:
    if cfg.search_repeats == 1:
        return ""
    return f", searched {cfg.search_repeats} times with independent sampler streams"


def agreement_text(agreement: pd.DataFrame | None) -> str:
    """One sentence: do validation and test order the arms, and the searches, the same way?"""
    if agreement is None or agreement.empty:
        return ""
    rows = {str(r["over"]): r for _, r in agreement.iterrows()}
    parts = []
    for over, what in (("arms", "the arms (each arm's mean)"), ("searches", "every search of every arm")):
        r = rows.get(over)
        if r is None or pd.isna(r["spearman_rho"]):
            continue
        rho, p, n = r["spearman_rho"], r["p_value"], int(r["n"])
        parts.append(f"over {what}, Spearman's rho = {rho:+.2f} (p = {p:.2g}, n = {n})")
    within = rows.get("repeat pairs within arms")
    if within is not None and int(within["n"]) > 0:
        parts.append(
            f"within arms, the search validation preferred also tested higher in {int(within['concordant'])}"
            f" of {int(within['n'])} pairs of searches"
        )
    if not parts:
        return ""
    return "<b>Validation and test agreement</b> (R@1): " + "; ".join(parts) + "."


def _repeats(page: Page, d: ComparisonData, prefix: str) -> None:
    text = agreement_text(d.agreement)
    if text:
        page.p(text)
    if d.searches is None or not d.repeated:
        return
    page.figure(
        f"{prefix}search-repeats",
        "Each arm's searches: validation and test",
        "Left: the best validation R@1 each search of an arm found. Right: the test R@1 of that search's"
        " config (dots: each evaluation seed; diamonds: the mean over seeds). Where an arm's searches"
        " scatter as widely as the arms differ, one search does not rank it.",
        F.search_repeats(d.searches),
    )
    s = d.searches
    table = pd.DataFrame({"arm": s["arm"], "search": s["repeat"]})
    for col, name in (
        ("val_recall@1", "val R@1"),
        ("test_recall@1", "test R@1"),
        ("test_map@r", "test MAP@R"),
    ):
        table[name] = [f"{v:.4f}" for v in s[col]]
    for label, cells in param_columns(s, d.cfg.trunk).items():
        table[label] = cells
    page.table(
        f"{prefix}searches",
        table,
        "Every search of every arm: the config it chose on validation and that config's test metrics (mean"
        " over the evaluation seeds).",
    )


def _search(page: Page, d: ComparisonData, prefix: str, multi: bool) -> None:
    page.h(3 if multi else 2, "Search, per arm")
    if d.arms is not None:
        page.table(
            f"{prefix}budgets",
            budget_table(d.arms),
            "What each search used: its trials (complete, pruned, failed), the images they processed"
            " (offline mining's whole-set passes included; an interrupted trial's epochs once) and the"
            " budget that ended it (budget held: images, n_trials or timeout)." + spent_text(d.arms),
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
