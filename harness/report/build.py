"""One self-contained HTML page per study: seaborn figures (inline PNG) and pandas tables."""

from __future__ import annotations

import base64
import html
import io
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from harness.errors import HarnessError  # noqa: E402
from harness.study.config import StudyConfig  # noqa: E402
from harness.study.runner import load_study, study_uid, tracker_for  # noqa: E402

METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "nmi")


def trials_frame(cfg: StudyConfig) -> pd.DataFrame:
    """Optuna trials joined with each trial's MLflow throughput, one row per trial."""
    study = load_study(cfg)
    df = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs", "duration"))
    if df.empty:
        raise HarnessError(f"study {cfg.name!r} has no trials yet; run the study first")
    df.columns = [c.removeprefix("params_").removeprefix("user_attrs_") for c in df.columns]
    df["state"] = df["state"].astype(str)
    tracker = tracker_for(cfg)
    runs = tracker.runs(tracker.parent_run(cfg.name, study_uid(study), cfg.to_dict()), phase="hpo")
    ml = pd.DataFrame(
        [
            {
                "number": int(r.data.tags["harness.trial"]),
                "mlflow_train_img_per_s": r.data.metrics.get("train_img_per_s"),
                "mlflow_run_id": r.info.run_id,
            }
            for r in runs
        ]
    )
    if not ml.empty:
        df = df.drop(columns=[c for c in ("mlflow_run_id",) if c in df]).merge(ml, on="number", how="left")
    if "batch_p" in df and "batch_k" in df:
        df["batch"] = (
            df["batch_p"].astype("Int64").astype(str) + "×" + df["batch_k"].astype("Int64").astype(str)
        )
        df["batch_size"] = df["batch_p"] * df["batch_k"]
    return df


def _png(fig: plt.Figure, path: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    fig.savefig(path, dpi=200, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def figures(df: pd.DataFrame, fig_dir: Path) -> list[tuple[str, str, str]]:
    """(title, caption, base64 PNG) for each figure; PNGs are also written to ``fig_dir``."""
    sns.set_theme(style="whitegrid", context="paper")
    fig_dir.mkdir(parents=True, exist_ok=True)
    done = df[df["state"] == "COMPLETE"].copy()
    scored = df[df["value"].notna()].copy()
    out = []

    if not done.empty and "mining" in done:
        fig, ax = plt.subplots(figsize=(8, 4))
        order = sorted(done["mining"].unique())
        sns.boxplot(
            done, x="mining", y="value", hue="distance" if "distance" in done else None, order=order, ax=ax
        )
        sns.stripplot(
            done,
            x="mining",
            y="value",
            hue="distance" if "distance" in done else None,
            order=order,
            dodge=True,
            color="k",
            size=3,
            legend=False,
            ax=ax,
        )
        ax.set(xlabel="mining strategy", ylabel="validation Recall@1")
        ax.tick_params(axis="x", rotation=30)
        out.append(
            (
                "Validation R@1 by mining × distance",
                "Complete trials; one point per trial.",
                _png(fig, fig_dir / "r1_by_mining_distance.png"),
            )
        )
    if not done.empty and "margin" in done:
        fig, ax = plt.subplots(figsize=(6, 4))
        sns.scatterplot(
            done,
            x="margin",
            y="value",
            hue="distance" if "distance" in done else None,
            style="mining" if "mining" in done else None,
            ax=ax,
        )
        ax.set(xlabel="margin", ylabel="validation Recall@1")
        ax.legend(fontsize=6, bbox_to_anchor=(1.02, 1), loc="upper left")
        out.append(
            (
                "Validation R@1 vs margin",
                "Per distance (colour) and mining (marker).",
                _png(fig, fig_dir / "r1_vs_margin.png"),
            )
        )
    if not done.empty and "batch" in done:
        fig, ax = plt.subplots(figsize=(6, 4))
        order = done.sort_values("batch_size")["batch"].unique()
        sns.stripplot(
            done, x="batch", y="value", order=order, hue="mining" if "mining" in done else None, ax=ax
        )
        ax.set(xlabel="batch P×K", ylabel="validation Recall@1")
        ax.legend(fontsize=6, bbox_to_anchor=(1.02, 1), loc="upper left")
        out.append(
            (
                "Validation R@1 vs batch P×K",
                "P classes × K images per batch.",
                _png(fig, fig_dir / "r1_vs_batch.png"),
            )
        )
    speed = "mlflow_train_img_per_s" if "mlflow_train_img_per_s" in scored else "train_img_per_s"
    if not scored.empty and speed in scored and "mining" in scored:
        fig, ax = plt.subplots(figsize=(7, 4))
        sns.barplot(
            scored, x="mining", y=speed, order=sorted(scored["mining"].unique()), errorbar="sd", ax=ax
        )
        ax.set(xlabel="mining strategy", ylabel="train images / s (last epoch)")
        ax.tick_params(axis="x", rotation=30)
        out.append(
            (
                "Train throughput by mining",
                "Mean ± s.d. over trials (complete and pruned), from MLflow.",
                _png(fig, fig_dir / "img_per_s_by_mining.png"),
            )
        )
    if not scored.empty:
        fig, ax = plt.subplots(figsize=(7, 4))
        marks = {"COMPLETE": "o", "PRUNED": "X", "FAIL": "s"}
        sns.scatterplot(scored, x="number", y="value", hue="state", style="state", markers=marks, ax=ax)
        best = done.sort_values("number").set_index("number")["value"].cummax()
        if not best.empty:
            ax.step(best.index, best.values, where="post", color="k", lw=1, label="best so far")
        ax.set(xlabel="trial", ylabel="validation Recall@1 (pruned: last reported)")
        ax.legend(fontsize=7)
        out.append(
            (
                "Optimisation history",
                "Pruned trials marked ×; line: best complete trial so far.",
                _png(fig, fig_dir / "history.png"),
            )
        )
    return out


def _number(v: float) -> str:
    """4 decimals for metrics, thousands for throughput, scientific for learning rates."""
    if v != 0 and abs(v) < 0.01:
        return f"{v:.2e}"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4f}"


def _table(df: pd.DataFrame, cls: str) -> str:
    return df.to_html(index=False, float_format=_number, classes=cls, border=0, na_rep="–")


def _environment(cfg: StudyConfig) -> pd.DataFrame:
    import timm
    import torch

    dev = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"CPU ({platform.processor() or platform.machine()})"
    )
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


def build_report(cfg: StudyConfig) -> Path:
    out_dir = cfg.study_dir / "report"
    df = trials_frame(cfg)
    figs = figures(df, out_dir / "figures")
    df.to_csv(out_dir / "trials.csv", index=False)
    sections = []
    test_csv = cfg.study_dir / "test.csv"
    if test_csv.is_file():
        test = pd.read_csv(test_csv)
        cols = (
            ["config", "val_recall@1"]
            + [f"test_{m}" for m in METRICS if f"test_{m}" in test]
            + [
                c
                for c in (
                    "mining",
                    "distance",
                    "margin",
                    "batch_p",
                    "batch_k",
                    "lr",
                    "embedding_dim",
                    "epochs",
                )
                if c in test
            ]
        )
        sections.append(
            (
                "Best configs on the test classes",
                "Top validation configs re-trained on all train classes, evaluated once on the test "
                "classes; the first row is the pretrained backbone without triplet training.",
                _table(test[cols], "test"),
            )
        )
    else:
        sections.append(
            ("Best configs on the test classes", "No test.csv yet: run <code>harness evaluate</code>.", "")
        )
    if "mining" in df:
        summary = (
            df.groupby("mining")
            .agg(
                trials=("number", "count"),
                complete=("state", lambda s: int((s == "COMPLETE").sum())),
                pruned=("state", lambda s: int((s == "PRUNED").sum())),
                best_val_r1=("value", "max"),
                median_val_r1=("value", "median"),
            )
            .reset_index()
            .sort_values("best_val_r1", ascending=False)
        )
        sections.append(
            (
                "Per-strategy summary",
                "Validation Recall@1 over this study's trials.",
                _table(summary, "summary"),
            )
        )
    keep = [
        c
        for c in (
            "number",
            "state",
            "value",
            "mining",
            "distance",
            "margin",
            "batch",
            "lr",
            "embedding_dim",
            "best_epoch",
            "train_img_per_s",
        )
        if c in df
    ]
    sections.append(("All trials", "Validation R@1 (value) per trial.", _table(df[keep], "trials")))
    manifest_path = cfg.study_dir / "split_manifest.json"
    if manifest_path.is_file():
        m = json.loads(manifest_path.read_text())
        split = pd.DataFrame(
            [
                {
                    "split": k,
                    "classes": m["num_classes"][k],
                    "images": m["num_images"][k],
                    "class ids": f"{min(v)}–{max(v)}" if k == "test" else f"{len(v)} ids",
                }
                for k, v in m["classes"].items()
            ]
        )
        sections.append(
            (
                "Split manifest",
                f"Class-disjoint; hash <code>{m['hash']}</code>; validation classes "
                f"carved from train classes with seed {m['seed']}.",
                _table(split, "manifest"),
            )
        )
    sections.append(("Environment", "", _table(_environment(cfg), "env")))
    page = _page(cfg, figs, sections[:1], sections[1:])
    out = out_dir / "index.html"
    out.write_text(page)
    try:
        tracker = tracker_for(cfg)
        parent = tracker.parent_run(cfg.name, study_uid(load_study(cfg)), cfg.to_dict())
        tracker.log_file(parent, out, "report")
        tracker.client.set_terminated(parent, status="FINISHED")  # the study's pipeline is done
    except Exception as e:  # the page is the product; MLflow is a copy of it
        print(f"warning: report not logged to MLflow: {e}")
    return out


CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222 }
table { border-collapse: collapse; font-size: 13px; margin: .5em 0 1.5em }
td, th { padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: right }
figure { display: inline-block; margin: 0 1em 1.5em 0; vertical-align: top; max-width: 100% }
img { max-width: 520px; width: 100% }
figcaption { font-size: 12px; max-width: 520px }
code { background: #f3f3f3; padding: 0 3px }
"""

Section = tuple[str, str, str]  # title, caption (HTML), body (HTML)


def _sections(sections: list[Section]) -> str:
    return "\n".join(f"<h2>{html.escape(t)}</h2><p>{c}</p>{body}" for t, c, body in sections)


def _page(cfg: StudyConfig, figs: list[tuple[str, str, str]], top: list[Section], rest: list[Section]) -> str:
    fig_html = "\n".join(
        f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,{b}">'
        f"<figcaption><b>{html.escape(t)}.</b> {html.escape(c)}</figcaption></figure>"
        for t, c, b in figs
    )
    e = html.escape
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{e(cfg.name)} — triplet-loss study report</title><style>{CSS}</style></head><body>
<h1>Study <code>{e(cfg.name)}</code></h1>
<p>{e(cfg.description or "")}<br>Dataset <b>{e(cfg.dataset)}</b>, backbone <b>{e(cfg.backbone)}</b>
({e(cfg.trunk)} trunk), {cfg.image_size}px, {cfg.epochs} epochs per trial. Hyperparameters were
chosen on validation classes carved out of the training classes; the test classes were used only for
the final table.</p>
{_sections(top)}
<h2>Figures</h2>
{fig_html}
{_sections(rest)}
</body></html>
"""
