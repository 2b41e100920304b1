"""One self-contained HTML page for one or more studies: seaborn figures (inline PNG, also saved
beside the page) and pandas tables (also saved as CSV).

``build_report([cfg])`` writes results/{study}/report/; several studies (e.g. one on CUB and one on
Cars with the same search space) go on one page with a cross-dataset comparison.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pandas as pd

from harness.errors import HarnessError
from harness.report import figures as F
from harness.report.comparison import (
    ComparisonData,
    comparison_section,
    load_comparison,
    rank_frame,
    rank_table,
    verdict,
)
from harness.report.page import Page
from harness.report.tables import (
    StudyData,
    comparisons_table,
    environment,
    equal_compute_table,
    final_table,
    load_data,
    manifest_table,
    model_out_text,
    protocol_text,
    strategy_table,
    trials_table,
    weights_table,
    weights_text,
    with_ci,
)
from harness.study.config import StudyConfig
from harness.study.identity import settle_parent, study_uid, tracker_for

# --- page ------------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def _why(d: StudyData, failed: pd.DataFrame) -> str:
    """The failed trials' reasons, most common first, and where each one's record is."""
    if failed.empty:
        return ""
    reasons = (
        failed["fail_reason"].fillna("no reason recorded")
        if "fail_reason" in failed
        else pd.Series(["no reason recorded"] * len(failed))
    )
    counts = reasons.value_counts()
    said = "; ".join(f"{html.escape(str(r))} ({n} trial{'s' if n != 1 else ''})" for r, n in counts.items())
    trials = d.cfg.study_dir / "trials"
    written = any((trials / str(int(n)) / "error.txt").is_file() for n in failed["number"])
    where = f"; each one's record: {html.escape(str(trials))}/&lt;n&gt;/error.txt" if written else ""
    return f": {said}{where}"


def _headline(d: StudyData) -> str:
    """The sentence a reader wants: the best config's test R@1 with its interval, against the baseline."""
    test, comp = d.test, d.comparisons
    if test is None or comp is None:
        if not (d.trials["state"] == "COMPLETE").any():
            failed = d.trials[d.trials["state"] == "FAIL"]
            return (
                f"No trial completed ({len(failed)} failed{_why(d, failed)}): there is nothing to evaluate"
                " yet. Fix the cause, then run the study again."
            )
        return "No final evaluation yet: run <code>harness evaluate</code>."
    best = test[test["kind"] == "top"].iloc[0]
    base = test[test["kind"] == "baseline"].iloc[0]
    c = comp[(comp["versus"] == base["config"]) & (comp["metric"] == "recall@1")].iloc[0]
    n = int(best["n_seeds"])
    ci = with_ci(best, "recall@1")
    verdict = (
        "above the baseline: the 95 % interval of the difference excludes zero"
        if c["low"] > 0
        else "below the baseline"
        if c["high"] < 0
        else "not distinguishable from the baseline at 95 %"
    )
    return (
        f"Best config <b>{html.escape(str(best['config']))}</b> "
        f"({html.escape(str(best.get('mining', '')))}, "
        f"{html.escape(str(best.get('distance', '')))}, "
        f"margin {best.get('margin', float('nan')):.3g}): test "
        f"Recall@1 <b>{ci}</b> (mean and 95 % interval, {best['interval']}, "
        f"{n} seed{'s' if n != 1 else ''}) vs "
        f"the no-training baseline <b>{base['test_recall@1']:.4f}</b>; difference {c['difference']:+.4f} "
        f"[{c['low']:+.4f}, {c['high']:+.4f}], p = {c['p_value']:.3g} ({c['method']}): <b>{verdict}</b>."
        + _map_disagreement(comp, base["config"], c)
    )


def _direction(row: pd.Series) -> str:
    return "above" if row["low"] > 0 else "below" if row["high"] < 0 else "tied"


def _map_disagreement(comp: pd.DataFrame, baseline: str, r1_vs_base: pd.Series) -> str:
    """When MAP@R tells another story than R@1, the headline says so."""
    maps = comp[comp["metric"] == "map@r"].set_index("versus")
    out = []
    if baseline in maps.index and _direction(maps.loc[baseline]) != _direction(r1_vs_base):
        m = maps.loc[baseline]
        out.append(
            f"by MAP@R it is {_direction(m)} the baseline instead ({m['difference']:+.4f}"
            f" [{m['low']:+.4f}, {m['high']:+.4f}])"
        )
    ahead = maps[(maps.index != baseline) & (maps["difference"] < 0)]
    if not ahead.empty:
        names = ", ".join(
            f"{html.escape(str(v))} ({r['difference']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}])"
            for v, r in ahead.iterrows()
        )
        n = len(ahead)
        out.append(f"by MAP@R it ranks below {n} reference{'s' if n != 1 else ''}: {names}")
    if not out:
        return ""
    return " <b>The metrics disagree:</b> " + "; ".join(out) + "."


def _study_section(page: Page, d: StudyData, prefix: str, multi: bool) -> None:
    cfg = d.cfg
    if multi:
        page.h(2, f"Study {cfg.name}")
    page.p(
        f"{html.escape(cfg.description or '')}<br>Dataset <b>{html.escape(cfg.dataset)}</b>, backbone "
        f"<b>{html.escape(cfg.backbone)}</b> ({html.escape(cfg.trunk)} trunk), {cfg.image_size}px, "
        f"{cfg.epochs} epochs per trial.{weights_text(cfg)} Hyperparameters were chosen on validation"
        " classes carved out of the training classes; the test classes were used only for the final"
        f" evaluation.{protocol_text(cfg, d.test)}"
    )
    for note in d.notes:
        page.parts.append(f'<p class="note">Warning: {html.escape(note)}</p>')
    page.p(_headline(d))
    _final_results(page, d, prefix)
    page.h(3 if multi else 2, "Search")
    _search_figures(page, d, prefix)
    _search_tables(page, d, prefix)


def _final_results(page: Page, d: StudyData, prefix: str) -> None:
    """The test-class evaluation: the final configs with intervals, and the paired comparisons."""
    if d.test is not None:
        page.table(
            f"{prefix}test",
            final_table(d.test, d.cfg.trunk),
            "Final configs re-trained on all train classes and scored on the test classes: the top "
            "validation configs and the fixed references (default recipe at the reference margin, one "
            "per mining strategy). Mean [95 % interval]: a t-interval over the n seeds; for the "
            "baseline (the pretrained backbone alone, one deterministic run) a bootstrap over test "
            "queries. R@2/4/8, NMI and every interval are in the CSV.",
        )
        out = model_out_text(d.test, page.out_dir, d.cfg.tracking_uri)
        if out:
            page.p(out)
        weights = weights_table(d.test) if (d.test["kind"] == "zero-shot").any() else None
        if weights is not None:
            page.table(
                f"{prefix}weights",
                weights,
                "The weights behind each row: the study's backbone and each zero-shot backbone (scored"
                " untrained, with its own input normalisation, at the study's image size).",
            )
        page.figure(
            f"{prefix}test_r1_ci",
            "Test Recall@1 with 95 % intervals",
            "Final configs; grey dotted line: the no-training baseline.",
            F.final_recall(d.test),
        )
    if d.comparisons is not None:
        page.table(
            f"{prefix}comparisons",
            comparisons_table(d.comparisons),
            "The best config minus each reference and minus the baseline.",
        )


def _search_figures(page: Page, d: StudyData, prefix: str) -> None:
    """What the search found, over all its trials (validation classes only)."""
    df, curves = d.trials, d.curves
    done = df[df["state"] == "COMPLETE"]
    scored = df[df["value"].notna()]
    page.figure(
        f"{prefix}r1_by_mining_distance",
        "Validation R@1 by mining × distance",
        "Complete trials; one point per trial.",
        F.r1_by_mining_distance(done),
    )
    page.figure(
        f"{prefix}r1_vs_margin", "Validation R@1 vs margin", "One panel per distance.", F.r1_vs_margin(done)
    )
    page.figure(
        f"{prefix}r1_vs_batch",
        "Validation R@1 vs batch P×K",
        "P classes × K images per batch.",
        F.r1_vs_batch(done),
    )
    page.figure(
        f"{prefix}throughput",
        "Train throughput by mining and batch",
        "Mean ± s.d. over trials (complete and pruned) of each trial's mean images/s.",
        F.throughput(scored),
    )
    page.figure(
        f"{prefix}history",
        "Optimisation history",
        "Pruned trials marked ×; line: best complete trial so far.",
        F.history(scored, done),
    )
    fig, why = F.importances(d.study)
    page.figure(
        f"{prefix}importances",
        "Parameter importances (fANOVA)",
        "Optuna's fANOVA over complete trials, validation R@1 as the target.",
        fig,
        why,
    )
    page.figure(
        f"{prefix}pareto",
        "Pareto front: validation R@1 vs train throughput",
        "Complete trials; dashed: trials no other trial beats on both.",
        F.pareto(done),
    )
    page.figure(
        f"{prefix}compute_curves",
        "Validation R@1 vs images processed",
        "Offline vs online mining at equal compute: thin lines are trials, thick lines the best "
        "reached by each family at each compute budget.",
        F.compute_curves(curves),
    )


def _search_tables(page: Page, d: StudyData, prefix: str) -> None:
    df, cfg = d.trials, d.cfg
    eq, budget = equal_compute_table(d.curves)
    if not eq.empty:
        page.table(
            f"{prefix}equal_compute",
            eq,
            f"Best validation R@1 within {budget:,.0f} images processed, the largest budget every "
            "strategy reached (offline: whole-set mining passes included).",
        )
    if "mining" in df:
        page.table(
            f"{prefix}strategies",
            strategy_table(df),
            "Validation Recall@1 per mining strategy: best and median of each trial's best validation"
            " R@1 (complete and pruned trials).",
        )
    page.table(
        f"{prefix}trials",
        trials_table(df),
        "Every trial. best val R@1: the highest validation Recall@1 over the epochs the trial ran (a"
        " pruned trial: up to where it was pruned); the per-strategy and equal-compute tables use the"
        " same per-epoch scores. host_load: the host's highest 1-minute load average during the trial.",
    )
    man = manifest_table(cfg)
    if man is not None:
        table, m = man
        page.table(
            f"{prefix}manifest",
            table,
            f"Split manifest {m['hash']}: class-disjoint; validation classes carved from the train "
            f"classes with seed {m['seed']}.",
        )


def cross_dataset_frame(data: list[StudyData]) -> pd.DataFrame:
    rows = []
    for d in data:
        if d.test is not None:
            refs = d.test[d.test["kind"] == "reference"].copy()
            refs["dataset"] = d.cfg.dataset
            refs["study"] = d.cfg.name
            rows.append(refs)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def build_report(cfgs: StudyConfig | list[StudyConfig], out_dir: Path | None = None) -> Path:
    """Build one page for the given studies and comparisons; log it to each one's MLflow parent run."""
    cfgs = [cfgs] if isinstance(cfgs, StudyConfig) else list(cfgs)
    if not cfgs:
        raise HarnessError("no study given to report on")
    data = [load_comparison(c) if c.compare is not None else load_data(c) for c in cfgs]
    multi = len(data) > 1
    if out_dir is None:
        out_dir = (
            cfgs[0].study_dir / "report"
            if not multi
            else cfgs[0].results / "report" / "+".join(c.name for c in cfgs)
        )
    page = Page(out_dir)
    title = f"Study {cfgs[0].name}" if not multi else "Studies " + ", ".join(c.name for c in cfgs)
    page.h(1, title)
    if multi:
        _across_datasets(page, [d for d in data if isinstance(d, StudyData)])
        _across_comparisons(page, [d for d in data if isinstance(d, ComparisonData)])
    for d in data:
        prefix = f"{_slug(d.cfg.name)}-" if multi else ""
        if isinstance(d, ComparisonData):
            comparison_section(page, d, prefix, multi)
        else:
            _study_section(page, d, prefix, multi)
    page.h(2, "Environment")
    page.table("environment", environment())
    out = out_dir / "index.html"
    out.write_text(page.html(title + " — triplet-loss study report"))
    for d in data:
        _log_to_mlflow(d.cfg, d.uid if isinstance(d, ComparisonData) else study_uid(d.study), out)
    return out


def _across_datasets(page: Page, data: list[StudyData]) -> None:
    refs = cross_dataset_frame(data)
    if refs.empty or refs["dataset"].nunique() < 2:
        return
    page.h(2, "Across datasets")
    page.figure(
        "cross_dataset",
        "Reference configs across datasets",
        "The same fixed recipe (reference margin, default parameters) per mining strategy "
        "on each dataset; test Recall@1, mean and 95 % interval.",
        F.cross_dataset(refs),
    )
    cols = [
        "study",
        "dataset",
        "config",
        "n_seeds",
        "test_recall@1",
        "test_recall@1_low",
        "test_recall@1_high",
    ]
    page.table("cross_dataset", refs[cols + ["test_map@r"]], "Reference configs per dataset.")


def _across_comparisons(page: Page, data: list) -> None:
    ranks = rank_frame(data)
    if ranks.empty:
        return
    page.h(2, "Across datasets: the arms ranked")
    for d in data:
        page.p(verdict(d))
    page.table(
        "ranks",
        rank_table(ranks),
        "Each arm's rank by mean test R@1 on each dataset (1 = best; ties share the better rank) and its"
        " mean rank. A rank says nothing about significance: see each dataset's pairwise tests below.",
    )
    page.figure(
        "ranks",
        "Test Recall@1 per arm and dataset",
        "Mean and 95 % interval over seeds; arms ordered by mean rank.",
        F.ranks(ranks),
    )


def _log_to_mlflow(cfg: StudyConfig, uid: str, page: Path) -> None:
    try:
        tracker = tracker_for(cfg)
        parent = tracker.parent_run(cfg.name, uid, cfg.to_dict())
        tracker.log_file(parent, page, "report")
        tracker.client.log_artifacts(parent, str(page.parent / "tables"), "report/tables")
        settle_parent(cfg)  # FINISHED where the budget is met and no worker is alive
    except Exception as e:  # the page is the product; MLflow holds a copy of it
        print(f"warning: report not logged to MLflow for {cfg.name}: {e}")
