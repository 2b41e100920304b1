"""One self-contained HTML page for one or more studies: seaborn figures (inline PNG, also saved
beside the page) and pandas tables (also saved as CSV).

``build_report([cfg])`` writes results/{study}/report/; several studies (e.g. one on CUB and one on
Cars with the same search space) go on one page with a cross-dataset comparison.
"""

from __future__ import annotations

import html
import math
import platform
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from harness.errors import HarnessError
from harness.params import TABLE, HyperParam, is_offline
from harness.report import figures as F
from harness.report.page import Page
from harness.study.config import StudyConfig, config_warnings
from harness.study.identity import load_study, read_manifest, settle_parent, study_uid, tracker_for


@dataclass
class StudyData:
    cfg: StudyConfig
    study: optuna.Study
    trials: pd.DataFrame
    curves: pd.DataFrame  # number, mining, family, images_processed, val_recall@1
    test: pd.DataFrame | None
    comparisons: pd.DataFrame | None
    notes: list[str] = field(default_factory=list)  # warnings shown at the top of the study's section


def trials_frame(study: optuna.Study, cfg: StudyConfig) -> pd.DataFrame:
    """One row per Optuna trial: params, validation R@1 (value), state and the trial's statistics."""
    df = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs", "duration"))
    if df.empty:
        raise HarnessError(f"study {cfg.name!r} has no trials yet; run the study first")
    df.columns = [c.removeprefix("params_").removeprefix("user_attrs_") for c in df.columns]
    df["state"] = df["state"].astype(str)
    # the best validation R@1 a trial reached over the epochs it ran: Optuna's value is that for a
    # complete trial, but the LAST reported score for a pruned one
    best = {
        t.number: max(t.intermediate_values.values(), default=math.nan)
        for t in study.get_trials(deepcopy=False)
    }
    df["best_val_r1"] = df["number"].map(best).astype(float)
    if "host_load" in df and "host_cpus" in df:
        df["contended"] = contended(df["host_load"], df["host_cpus"])
    for k, v in cfg.search_space.fixed.items():  # values fixed in the search space are not Optuna params
        if k not in df:
            df[k] = v
    if "batch_p" in df and "batch_k" in df:
        df["batch"] = (
            df["batch_p"].astype("Int64").astype(str) + "×" + df["batch_k"].astype("Int64").astype(str)
        )
        df["batch_size"] = df["batch_p"] * df["batch_k"]
    return df


def contended(load: pd.Series, cpus: pd.Series) -> pd.Series:
    """A 1-minute load average above the CPUs (with a margin of a quarter of them, at least 0.5: the
    average lags and counts short-lived helpers) means other work competed with the trial."""
    return load > cpus + np.maximum(0.5, 0.25 * cpus)


def curves_frame(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    if "curve" in df:
        for _, t in df[df["state"].isin(["COMPLETE", "PRUNED"])].iterrows():  # not a killed trial's stub
            if isinstance(t["curve"], list):
                family = "offline" if is_offline(t.get("mining", "")) else "online"
                for images, r1 in t["curve"]:
                    rows.append(
                        {
                            "number": t["number"],
                            "mining": t.get("mining"),
                            "family": family,
                            "images_processed": images,
                            "val_recall@1": r1,
                        }
                    )
    return pd.DataFrame(rows, columns=["number", "mining", "family", "images_processed", "val_recall@1"])


def _this_incarnation(path: Path, uid: str, notes: list[str]) -> pd.DataFrame | None:
    """A derived CSV, or None when it is missing or belongs to another incarnation of the study."""
    if not path.is_file():
        return None
    df = pd.read_csv(path, dtype={"study_uid": str, "arm_uid": str})  # "012e45..." must stay text
    found = sorted(set(df["study_uid"].astype(str))) if "study_uid" in df else []
    if found != [uid]:
        was = f"uid {', '.join(found)}" if found else "no study uid: an older harness"
        notes.append(
            f"{path} belongs to an earlier incarnation of this study ({was}; the study now is uid {uid}),"
            " so it is left out: run 'harness evaluate' for this study"
        )
        return None
    return df


def load_data(cfg: StudyConfig) -> StudyData:
    study = load_study(cfg)
    df = trials_frame(study, cfg)
    uid = study_uid(study)
    notes = [*config_warnings(cfg, read_manifest(cfg))]
    test = _this_incarnation(cfg.study_dir / "test.csv", uid, notes)
    comp = _this_incarnation(cfg.study_dir / "comparisons.csv", uid, notes)
    if test is None or comp is None:
        test = comp = None
    if "contended" in df and df["contended"].any():
        n, cpus = int(df["contended"].sum()), int(df["host_cpus"].max())
        notes.append(
            f"{n} of {len(df)} trials ran while the host's load exceeded its {cpus} CPUs (other work"
            " competed): their throughput is drawn hollow in the Pareto front, and the throughput chart"
            " leaves them out of each cell's mean (a cell with no other trial shows theirs, marked)"
        )
    return StudyData(cfg, study, df, curves_frame(df), test, comp, notes)


# --- tables ----------------------------------------------------------------------------------------


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.4f}"


def _with_ci(row: pd.Series, m: str) -> str:
    mean, lo, hi = row[f"test_{m}"], row.get(f"test_{m}_low"), row.get(f"test_{m}_high")
    if lo is None or (isinstance(lo, float) and math.isnan(lo)):
        return _fmt(mean)
    return f"{mean:.4f} [{lo:.4f}, {hi:.4f}]"


def final_table(test: pd.DataFrame, trunk: str) -> pd.DataFrame:
    """R@1, MAP@R and R-precision with their intervals, R@2/4/8 and NMI as means (all in the CSV of
    the evaluation); then the config's hyperparameters (the table's labelled rows that apply to the
    trunk mode), narrow enough for a 1200 px page."""
    out = pd.DataFrame({"config": test["config"], "n": test["n_seeds"]})
    for m, name in (("recall@1", "R@1 [95 % CI]"), ("map@r", "MAP@R [95 % CI]"), ("r_precision", "R-Prec")):
        if f"test_{m}" in test:
            out[name] = [
                _with_ci(r, m) if m != "r_precision" else _fmt(r[f"test_{m}"]) for _, r in test.iterrows()
            ]
    if all(f"test_recall@{k}" in test for k in (2, 4, 8)):
        out["R@2 / 4 / 8"] = [
            " / ".join(f"{r[f'test_recall@{k}']:.3f}" for k in (2, 4, 8)) for _, r in test.iterrows()
        ]
    out["val R@1"] = [_fmt(v) for v in test["val_recall@1"]]
    for p in report_params(trunk):
        if p.name == "batch_p" and "batch_k" in test:
            out[p.label] = [
                "–" if pd.isna(a) else f"{int(a)}×{int(b)}"
                for a, b in zip(test["batch_p"], test["batch_k"], strict=True)
            ]
        elif p.name in test:
            out[p.label] = [_cell(p, v) for v in test[p.name]]
    out["epochs"] = test["epochs"]
    return out


def report_params(trunk: str) -> list[HyperParam]:
    """The hyperparameters the report shows as columns: the labelled rows of the table that apply."""
    return [p for p in TABLE.values() if p.label and p.applies(trunk)]


def _cell(p: HyperParam, v: object) -> str:
    """A parameter's value in the row's format (``-`` for none)."""
    if isinstance(v, float) and math.isnan(v):
        return "–"
    if p.fmt and isinstance(v, float) and v != 0:
        return p.format(v)
    return _param(v)


def _param(v: object) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if v == 0:
            return "0"
        if v.is_integer() and abs(v) >= 1:
            return str(int(v))
        return f"{v:.1e}" if abs(v) < 0.01 else f"{v:.3g}"
    return str(v)


def comparisons_table(comp: pd.DataFrame) -> pd.DataFrame:
    out = comp.copy()
    out["difference [95 % CI]"] = [
        f"{r['difference']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}]" for _, r in comp.iterrows()
    ]
    out["verdict"] = [
        "higher" if r["low"] > 0 else "lower" if r["high"] < 0 else "not distinguishable at 95 %"
        for _, r in comp.iterrows()
    ]
    return out[["config", "versus", "metric", "difference [95 % CI]", "p_value", "n", "method", "verdict"]]


def strategy_table(df: pd.DataFrame) -> pd.DataFrame:
    return (
        df.groupby("mining")
        .agg(
            trials=("number", "count"),
            complete=("state", lambda s: int((s == "COMPLETE").sum())),
            pruned=("state", lambda s: int((s == "PRUNED").sum())),
            failed=("state", lambda s: int((s == "FAIL").sum())),
            best_val_r1=("best_val_r1", "max"),
            median_val_r1=("best_val_r1", "median"),
            mean_train_img_per_s=("train_img_per_s", "mean")
            if "train_img_per_s" in df
            else ("number", lambda s: math.nan),  # no trial got as far as an epoch
        )
        .reset_index()
        .sort_values("best_val_r1", ascending=False)
    )


def equal_compute_table(curves: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """Best validation R@1 each strategy reached within the same budget of images processed: the
    largest budget every strategy's trials reached (offline mining's embedding passes count)."""
    if curves.empty:
        return pd.DataFrame(), math.nan
    reach = curves.groupby("mining")["images_processed"].max()
    budget = float(reach.min())
    within = curves[curves["images_processed"] <= budget]
    out = (
        within.groupby(["mining", "family"])["val_recall@1"]
        .max()
        .rename("best val R@1 at budget")
        .reset_index()
    )
    out["best val R@1 overall"] = out["mining"].map(curves.groupby("mining")["val_recall@1"].max())
    best = curves.groupby("mining")["val_recall@1"].transform("max")
    at_best = curves[curves["val_recall@1"] == best]  # ties: the fewest images that reached it
    out["images to best overall"] = out["mining"].map(at_best.groupby("mining")["images_processed"].min())
    return out.sort_values("best val R@1 at budget", ascending=False), budget


def trials_table(df: pd.DataFrame) -> pd.DataFrame:
    keep = [
        "number",
        "state",
        "best_val_r1",
        "epochs_run",
        "best_epoch",
        *(p.name for p in TABLE.values() if p.name in df),
        "batch",
        "train_img_per_s",
        "host_load",
        "images_processed",
    ]
    out = df[[c for c in dict.fromkeys(keep) if c in df]]
    return out.rename(columns={"best_val_r1": "best val R@1", "train_img_per_s": "train img/s"})


def manifest_table(cfg: StudyConfig) -> tuple[pd.DataFrame, dict] | None:
    m = read_manifest(cfg)
    if m is None:
        return None
    rows = [
        {
            "split": k,
            "classes": m["num_classes"][k],
            "images": m["num_images"][k],
            "class ids": f"{min(v)}–{max(v)}" if k == "test" else f"{len(v)} ids",
        }
        for k, v in m["classes"].items()
    ]
    if m.get("folds"):  # k-fold validation: the rows above are fold 1's; every fold validates once
        rows += [
            {
                "split": f"validation fold {i + 1}",
                "classes": len(f),
                "images": None,
                "class ids": f"{len(f)} ids",
            }
            for i, f in enumerate(m["folds"])
        ]
    return pd.DataFrame(rows), m


def environment() -> pd.DataFrame:
    import timm
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.machine()})"
    return pd.DataFrame(
        [
            {
                "device": dev,
                "torch": torch.__version__,
                "timm": timm.__version__,
                "optuna": optuna.__version__,
                "python": platform.python_version(),
                "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            }
        ]
    )


# --- page ------------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def _why(d: StudyData, failed: pd.DataFrame) -> str:
    """The failed trials' reasons, most common first, and where each one's record is."""
    if failed.empty:
        return ""
    reasons = (
        failed["fail_reason"].fillna("worker stopped")
        if "fail_reason" in failed
        else pd.Series(["?"] * len(failed))
    )
    counts = reasons.value_counts()
    said = "; ".join(f"{html.escape(str(r))} ({n} trial{'s' if n != 1 else ''})" for r, n in counts.items())
    first = int(failed["number"].iloc[0])
    record = d.cfg.study_dir / "trials" / str(first) / "error.txt"
    where = (
        f"; each one's record: {html.escape(str(record.parent.parent))}/&lt;n&gt;/error.txt"
        if record.is_file()
        else ""
    )
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
    ci = _with_ci(best, "recall@1")
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
        f"{cfg.epochs} epochs per trial. Hyperparameters were chosen on validation classes carved out of "
        "the training classes; the test classes were used only for the final evaluation."
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
    from harness.report.comparison import ComparisonData, comparison_section, load_comparison

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
    from harness.report.comparison import rank_frame, rank_table, verdict

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
