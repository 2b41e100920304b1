"""What both report pages are made of: a study's data as loaded from its storage and result files
(trials, curves, the test tables of its current incarnation), and the tables built from them."""

from __future__ import annotations

import html
import math
import os
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from harness.errors import HarnessError, redact_url
from harness.params import TABLE, HyperParam, is_offline
from harness.study.config import StudyConfig, config_warnings
from harness.study.guard import stored_weights
from harness.study.identity import load_study, read_manifest, study_uid


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


def this_incarnation(path: Path, uid: str, notes: list[str]) -> pd.DataFrame | None:
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
    test = this_incarnation(cfg.study_dir / "test.csv", uid, notes)
    comp = this_incarnation(cfg.study_dir / "comparisons.csv", uid, notes)
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


def fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.4f}"


def with_ci(row: pd.Series, m: str) -> str:
    mean, lo, hi = row[f"test_{m}"], row.get(f"test_{m}_low"), row.get(f"test_{m}_high")
    if lo is None or (isinstance(lo, float) and math.isnan(lo)):
        return fmt(mean)
    return f"{mean:.4f} [{lo:.4f}, {hi:.4f}]"


def final_table(test: pd.DataFrame, trunk: str) -> pd.DataFrame:
    """R@1, MAP@R and R-precision with their intervals, R@2/4/8 and NMI as means (all in the CSV of
    the evaluation); then the config's hyperparameters (the table's labelled rows that apply to the
    trunk mode), narrow enough for a 1200 px page."""
    out = pd.DataFrame({"config": test["config"], "n": test["n_seeds"]})
    for m, name in (("recall@1", "R@1 [95 % CI]"), ("map@r", "MAP@R [95 % CI]"), ("r_precision", "R-Prec")):
        if f"test_{m}" in test:
            out[name] = [
                with_ci(r, m) if m != "r_precision" else fmt(r[f"test_{m}"]) for _, r in test.iterrows()
            ]
    if all(f"test_recall@{k}" in test for k in (2, 4, 8)):
        out["R@2 / 4 / 8"] = [
            " / ".join(f"{r[f'test_recall@{k}']:.3f}" for k in (2, 4, 8)) for _, r in test.iterrows()
        ]
    out["val R@1"] = [fmt(v) for v in test["val_recall@1"]]
    for label, cells in param_columns(test, trunk).items():
        out[label] = cells
    out["epochs"] = test["epochs"]
    return out


def param_columns(frame: pd.DataFrame, trunk: str) -> dict[str, list[str]]:
    """The hyperparameter columns of configs (one per row of ``frame``), as the report shows them."""
    out = {}
    for p in report_params(trunk):
        if p.name == "batch_p" and "batch_k" in frame:
            out[p.label] = [
                "–" if pd.isna(a) else f"{int(a)}×{int(b)}"
                for a, b in zip(frame["batch_p"], frame["batch_k"], strict=True)
            ]
        elif p.name in frame:
            out[p.label] = [_cell(p, v) for v in frame[p.name]]
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
            "class ids": f"{min(v)}–{max(v)}" if k == "test" and _contiguous(v) else f"{len(v)} ids",
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


def _contiguous(ids: list[int]) -> bool:
    """A class range such as CUB's 101-200 (a drawn split of the user's classes is not one)."""
    return bool(ids) and max(ids) - min(ids) + 1 == len(set(ids))


def protocol_text(cfg: StudyConfig, test: pd.DataFrame | None = None) -> str:
    """How the test numbers were scored, from the split manifest: leave-one-out or query against
    gallery, with the counts, and NMI's sample when it was clustered on part of the test images."""
    m = read_manifest(cfg)
    if not m:
        return ""
    n, c = m["num_images"]["test"], m["num_classes"]["test"]
    split = {"given": " (the split the data gives)", "seeded": f" (drawn with split_seed {cfg.split_seed})"}
    how = split.get(m.get("classes_split", ""), "")
    if m.get("class_disjoint") is False:
        how += ", sharing classes with training (class_disjoint: false: retrieval of seen classes)"
    scored = m.get("protocol")
    if scored and scored.get("test") == "query-gallery":
        text = (
            f" Test: {n:,} images of {c:,} classes{how}, scored <b>query against gallery</b>:"
            f" {scored['queries']:,} queries, each ranked against the {scored['gallery']:,} gallery images"
            " (its own image left out); R = the gallery images of its class."
        )
    else:
        text = (
            f" Test: {n:,} images of {c:,} classes{how}, scored <b>leave-one-out</b>: each image ranked"
            " against all the others."
        )
    if test is not None and "test_nmi_images" in test and test["test_nmi_images"].notna().any():
        k = int(test["test_nmi_images"].dropna().iloc[0])
        text += f" NMI was clustered on a seeded sample of {k:,} test images (whole classes)."
    return text


def weights_text(cfg: StudyConfig) -> str:
    """Which weights the study's backbone loaded and the preprocessing they come with, for the page's
    first paragraph (empty before the data is prepared)."""
    w = stored_weights(cfg)
    if not w:
        return ""
    digest = f", sha256 <code>{str(w['sha256'])[:12]}</code>" if w.get("sha256") else ""
    mean = ", ".join(f"{v:.3g}" for v in w.get("mean", ()))
    std = ", ".join(f"{v:.3g}" for v in w.get("std", ()))
    return (
        f" Weights <code>{html.escape(str(w.get('origin')))}</code>{digest}; their preprocessing: mean"
        f" ({mean}), std ({std}), {html.escape(str(w.get('interpolation')))}, crop {w.get('crop_pct')},"
        f" native input {w.get('input_size')} px (the study crops {cfg.image_size} px)."
    )


def weights_table(test: pd.DataFrame) -> pd.DataFrame | None:
    """Each row's backbone and the weights it loaded (origin, SHA-256, input normalisation): the
    arms of a comparison of backbones and every zero-shot row (None: results without the record)."""
    if "weights" not in test or test["weights"].isna().all():
        return None
    rows = test.drop_duplicates(["backbone", "weights"]) if "backbone" in test else test
    return pd.DataFrame(
        {
            "row": rows["config"],
            "backbone": rows.get("backbone", ""),
            "weights": rows["weights"].fillna("–"),
            "sha256": [str(v)[:12] if isinstance(v, str) and v else "–" for v in rows["weights_sha256"]],
            "normalisation": rows["weights_norm"].fillna("–"),
        }
    )


def model_out_text(test: pd.DataFrame, page_dir: Path, tracking_uri: str) -> str:
    """Where the trained model went: each registered model (the best config's first seed; one per
    arm in a comparison), its MLflow URI and version, and its exported files, linked from the page."""
    if "registered_model" not in test:
        return ""
    rows = test[test["registered_model"].notna()]
    if rows.empty:
        return ""
    items = []
    for _, r in rows.iterrows():
        folder = Path(str(r.get("model_dir", "")))
        where = ""
        if folder.name:
            link = html.escape(os.path.relpath(folder, page_dir))
            files = "ONNX, torch.export, TorchScript, preprocessing.json"
            where = f'; files ({files}): <a href="{link}">{html.escape(folder.name)}/</a>'
        version = r.get("model_version")
        items.append(
            f"<code>{html.escape(str(r['registered_model']))}</code> (version {html.escape(str(version))};"
            f" {html.escape(str(r['config']))}, seed {int(r['model_seed'])}){where}"
        )
    return (
        "<b>The model out.</b> Registered in MLflow ("
        + html.escape(redact_url(tracking_uri))
        + "): "
        + "; ".join(items)
        + ". Load it with <code>mlflow.pyfunc.load_model(URI)</code> (images [B, 3, S, S] in [0, 1]"
        " &rarr; L2-normalised embeddings), or browse it under Models in the MLflow UI. Every final"
        " run's test embeddings are in <code>evaluation/embeddings/</code>."
    )
