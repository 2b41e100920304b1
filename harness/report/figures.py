"""The report's seaborn figures. Each returns a Figure, or None when the data cannot show it."""

from __future__ import annotations

import math
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

Figure = plt.Figure
MIN_BOX = 5  # trials a cell needs before a box says more than its points


def _legend_outside(ax: plt.Axes) -> None:
    if ax.get_legend() is not None:
        ax.legend(fontsize=6, bbox_to_anchor=(1.02, 1), loc="upper left")


def r1_by_mining_distance(done: pd.DataFrame) -> Figure | None:
    """Every trial as a point in its distance's colour, per mining strategy; a box only around a
    (mining, distance) cell of at least ``MIN_BOX`` trials (a box around 2 points says less than the
    points). Side-by-side slots per distance only when some cell has a box; else points share the
    strategy's column, so no empty slots sit beside a label."""
    if done.empty or "mining" not in done:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    order = sorted(done["mining"].unique())
    hue = "distance" if "distance" in done else None
    hue_order = sorted(done["distance"].unique()) if hue else None
    palette = (
        dict(zip(hue_order, sns.color_palette(n_colors=len(hue_order)), strict=True)) if hue_order else None
    )
    cells = done.groupby(["mining", hue] if hue else ["mining"])["value"].transform("size")
    boxed = done[cells >= MIN_BOX]
    dodge = hue is not None and not boxed.empty
    groups = dict(x="mining", y="value", hue=hue, order=order, hue_order=hue_order, palette=palette)
    if not boxed.empty:
        sns.boxplot(boxed, **groups, ax=ax, fliersize=0, boxprops={"alpha": 0.35}, dodge=dodge, legend=False)
    sns.stripplot(
        done,
        **groups,
        dodge=dodge,
        color=None if hue else "k",
        size=4,
        edgecolor="k",
        linewidth=0.4,
        legend=hue is not None,
        ax=ax,
    )
    ax.set(xlabel="mining strategy", ylabel="validation Recall@1")
    ax.tick_params(axis="x", rotation=30)
    _legend_outside(ax)
    return fig


def r1_vs_margin(done: pd.DataFrame) -> Figure | None:
    """One panel per distance on a shared margin axis, so panels compare at a glance."""
    if done.empty or "margin" not in done:
        return None
    distances = sorted(done["distance"].unique()) if "distance" in done else [None]
    fig, axes = plt.subplots(
        1,
        len(distances),
        figsize=(3.6 * len(distances) + 1.5, 3.6),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    for ax, dist in zip(axes[0], distances, strict=True):
        part = done if dist is None else done[done["distance"] == dist]
        sns.scatterplot(
            part,
            x="margin",
            y="value",
            hue="mining" if "mining" in part else None,
            hue_order=sorted(done["mining"].unique()) if "mining" in done else None,
            ax=ax,
            legend=ax is axes[0][-1],
        )
        ax.set(xlabel="margin", ylabel="validation Recall@1", title=str(dist or ""))
    lo, hi = float(done["margin"].min()), float(done["margin"].max())
    pad = 0.05 * (hi - lo) or 0.05 * max(abs(hi), 1e-3)
    axes[0][0].set_xlim(lo - pad, hi + pad)
    _legend_outside(axes[0][-1])
    return fig


def r1_vs_batch(done: pd.DataFrame) -> Figure | None:
    if done.empty or "batch" not in done:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    order = done.sort_values(["batch_size", "batch_p"])["batch"].unique()
    sns.stripplot(done, x="batch", y="value", order=order, hue="mining" if "mining" in done else None, ax=ax)
    ax.set(xlabel="batch P×K", ylabel="validation Recall@1")
    _legend_outside(ax)
    return fig


def throughput(scored: pd.DataFrame) -> Figure | None:
    """Mean train images/s per mining (rows) x batch P×K (columns), the number in each cell: no bar
    drifts from its label, and an empty cell is a combination no trial ran. Each cell's mean is over
    its trials measured without contention (host load within its CPUs); a cell whose every trial ran
    beside other work still shows their mean, marked "under load", so a busy machine never loses the
    figure, and its numbers are never passed off as clean."""
    if scored.empty or "train_img_per_s" not in scored or "mining" not in scored:
        return None
    d = scored.dropna(subset=["train_img_per_s"]).copy()
    if d.empty:
        return None
    d["loaded"] = d["contended"].fillna(False).astype(bool) if "contended" in d else False
    if "batch" not in d:
        d = d.assign(batch="all")
    order = (
        d.sort_values(["batch_size", "batch_p"])["batch"].unique()
        if "batch_size" in d
        else sorted(d["batch"].unique())
    )
    clean = d[~d["loaded"]]
    table = dict(index="mining", columns="batch", values="train_img_per_s")
    all_mean = d.pivot_table(**table, aggfunc="mean")
    grid = all_mean.copy()
    if not clean.empty:
        grid = clean.pivot_table(**table, aggfunc="mean").reindex(index=grid.index, columns=grid.columns)
    columns = [c for c in order if c in grid.columns]
    grid, all_mean = (
        grid.reindex(columns=columns).sort_index(),
        all_mean.reindex(columns=columns).sort_index(),
    )
    counts = d.pivot_table(**table, aggfunc="count").reindex(index=grid.index, columns=grid.columns)
    loaded = d.pivot_table(index="mining", columns="batch", values="loaded", aggfunc="sum")
    loaded = loaded.reindex(index=grid.index, columns=grid.columns).fillna(0)
    labels = grid.copy().astype(object)
    for i in grid.index:
        for c in grid.columns:
            n, hot = counts.loc[i, c], int(loaded.loc[i, c])
            if pd.isna(n):
                labels.loc[i, c] = ""
            elif hot == n:  # every trial of the cell ran under load: their mean, marked
                grid.loc[i, c] = all_mean.loc[i, c]
                labels.loc[i, c] = f"{all_mean.loc[i, c]:,.0f}\n(n={int(n)}, under load)"
            else:
                busy = f", {hot} under load left out" if hot else ""
                labels.loc[i, c] = f"{grid.loc[i, c]:,.0f}\n(n={int(n)}{busy})"
    fig, ax = plt.subplots(figsize=(1.5 * len(grid.columns) + 3, 0.6 * len(grid) + 1.5))
    sns.heatmap(
        grid,
        annot=labels.to_numpy(),
        fmt="",
        cmap="viridis",
        cbar_kws={"label": "train images / s (mean over trials)"},
        linewidths=0.5,
        annot_kws={"fontsize": 7},
        ax=ax,
    )
    ax.set(xlabel="batch P×K", ylabel="mining strategy")
    return fig


def history(scored: pd.DataFrame, done: pd.DataFrame) -> Figure | None:
    if scored.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    marks = {"COMPLETE": "o", "PRUNED": "X", "FAIL": "s"}
    sns.scatterplot(scored, x="number", y="value", hue="state", style="state", markers=marks, ax=ax)
    best = done.sort_values("number").set_index("number")["value"].cummax()
    if not best.empty:
        ax.step(best.index, best.values, where="post", color="k", lw=1, label="best so far")
    ax.set(xlabel="trial", ylabel="validation Recall@1 (pruned: last reported)")
    ax.legend(fontsize=7)
    return fig


def importances(study: optuna.Study) -> tuple[Figure | None, str]:
    """fANOVA importances of the searched parameters; (None, why) when they cannot be estimated."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(done) < 3:
        return None, f"{len(done)} complete trials; fANOVA needs at least 3"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
            )
    except (RuntimeError, ValueError) as e:
        return None, f"fANOVA could not run: {e}"
    if not imp:
        return None, "no parameter varies across the complete trials"
    s = pd.Series(imp).sort_values()
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(s) + 1))
    ax.barh(s.index, s.values, color=sns.color_palette()[0])
    ax.set(xlabel="fANOVA importance (share of validation R@1 variance)", xlim=(0, max(1.0, s.max())))
    return fig, ""


def pareto_mask(speed: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Non-dominated points when both are maximised (ties kept)."""
    keep = np.ones(len(speed), dtype=bool)
    for i in range(len(speed)):
        dominated = (
            (speed >= speed[i]) & (quality >= quality[i]) & ((speed > speed[i]) | (quality > quality[i]))
        )
        keep[i] = not dominated.any()
    return keep


def pareto(done: pd.DataFrame) -> Figure | None:
    """The front over trials measured without contention; contended trials are drawn hollow."""
    if done.empty or "train_img_per_s" not in done:
        return None
    d = done.dropna(subset=["train_img_per_s", "value"]).copy()
    if d.empty:
        return None
    contended = (
        d["contended"].fillna(False).astype(bool) if "contended" in d else pd.Series(False, index=d.index)
    )
    clean = d[~contended].copy()
    clean["pareto"] = pareto_mask(clean["train_img_per_s"].to_numpy(), clean["value"].to_numpy())
    fig, ax = plt.subplots(figsize=(7, 4))
    hue = "mining" if "mining" in d else None
    hue_order = sorted(d["mining"].unique()) if hue else None
    sns.scatterplot(clean, x="train_img_per_s", y="value", hue=hue, hue_order=hue_order, ax=ax, alpha=0.8)
    if contended.any():
        ax.scatter(
            d.loc[contended, "train_img_per_s"],
            d.loc[contended, "value"],
            facecolors="none",
            edgecolors="grey",
            label="measured under host contention",
        )
    front = clean[clean["pareto"]].sort_values("train_img_per_s")
    ax.plot(
        front["train_img_per_s"],
        front["value"],
        "k--",
        lw=1,
        marker="o",
        mfc="none",
        ms=9,
        label="Pareto front",
    )
    for _, r in front.iterrows():
        ax.annotate(
            f"#{int(r['number'])}",
            (r["train_img_per_s"], r["value"]),
            fontsize=6,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.set(xlabel="train images / s", ylabel="validation Recall@1")
    ax.legend(fontsize=6, bbox_to_anchor=(1.02, 1), loc="upper left")
    return fig


def compute_curves(curves: pd.DataFrame) -> Figure | None:
    """Validation R@1 vs images processed, one thin line per trial, and each family's upper envelope."""
    if curves.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    palette = {"online": sns.color_palette()[0], "offline": sns.color_palette()[3]}
    for (_, family), part in curves.groupby(["number", "family"]):
        ax.plot(part["images_processed"], part["val_recall@1"], color=palette[family], alpha=0.25, lw=0.8)
    for family, part in curves.groupby("family"):
        env = part.sort_values("images_processed")
        ax.step(
            env["images_processed"],
            env["val_recall@1"].cummax(),
            where="post",
            color=palette[family],
            lw=2,
            label=f"{family}: best so far at this compute",
        )
    ax.set(xlabel="images processed (offline: incl. whole-set mining passes)", ylabel="validation Recall@1")
    ax.legend(fontsize=7)
    return fig


def final_recall(test: pd.DataFrame) -> Figure | None:
    """Test Recall@1 of the final configs with their 95 % intervals; the baseline as a dotted line."""
    if test.empty or "test_recall@1" not in test:
        return None
    t = test.iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.38 * len(t) + 1.2))
    colours = {"baseline": "grey", "top": sns.color_palette()[0], "reference": sns.color_palette()[1]}
    for y, (_, r) in enumerate(t.iterrows()):
        lo, hi = r["test_recall@1_low"], r["test_recall@1_high"]
        err = None if math.isnan(lo) else [[r["test_recall@1"] - lo], [hi - r["test_recall@1"]]]
        ax.errorbar(r["test_recall@1"], y, xerr=err, fmt="o", color=colours.get(r["kind"], "k"), capsize=3)
    base = test[test["kind"] == "baseline"]
    if not base.empty:
        ax.axvline(base["test_recall@1"].iloc[0], color="grey", ls=":", lw=1)
    ax.set_yticks(
        range(len(t)),
        [f"{c} (n={int(n)})" for c, n in zip(t["config"], t["n_seeds"], strict=True)],
        fontsize=7,
    )
    ax.set(xlabel="test Recall@1 (mean, 95 % interval)")
    return fig


def cross_dataset(refs: pd.DataFrame) -> Figure | None:
    """Reference configs (same recipe on every dataset) by mining x dataset, with 95 % intervals."""
    if refs.empty or refs["dataset"].nunique() < 2:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    minings = sorted(refs["mining"].unique())
    refs = refs.assign(series=refs["dataset"] + " (" + refs["study"] + ")")  # two studies may share a dataset
    datasets = sorted(refs["series"].unique())
    width = 0.8 / len(datasets)
    for i, ds in enumerate(datasets):
        part = refs[refs["series"] == ds].drop_duplicates("mining").set_index("mining").reindex(minings)
        x = np.arange(len(minings)) + (i - (len(datasets) - 1) / 2) * width
        mean = part["test_recall@1"].to_numpy()
        err = np.vstack(
            [mean - part["test_recall@1_low"].to_numpy(), part["test_recall@1_high"].to_numpy() - mean]
        )
        ax.bar(x, mean, width, label=ds, yerr=np.nan_to_num(err), capsize=2)
    ax.set_xticks(range(len(minings)), minings, rotation=30)
    ax.set(xlabel="mining strategy (reference margin, default recipe)", ylabel="test Recall@1")
    ax.legend(title="dataset (study)", fontsize=7)
    return fig


# --- comparisons (compare:) ------------------------------------------------------------------------


def pairwise_matrix(comp: pd.DataFrame, arms: list[str], alpha: float = 0.05) -> Figure | None:
    """Mean test R@1 of the row's arm minus the column's, over the same seeds; a star where the
    Holm-adjusted paired t-test rejects equality at ``alpha``."""
    pairs = comp[(comp["family"] == "pair") & (comp["metric"] == "recall@1")]
    if pairs.empty or len(arms) < 2:
        return None
    diff = pd.DataFrame(np.nan, index=arms, columns=arms)
    star = pd.DataFrame("", index=arms, columns=arms)
    for _, r in pairs.iterrows():
        a, b = str(r["config"]), str(r["versus"])
        mark = "*" if r["p_holm"] < alpha else ""
        diff.loc[a, b], diff.loc[b, a] = r["difference"], -r["difference"]
        star.loc[a, b] = star.loc[b, a] = mark
    labels = diff.apply(
        lambda col: [
            f"{v:+.3f}{s}" if not np.isnan(v) else "" for v, s in zip(col, star[col.name], strict=True)
        ]
    )
    lim = float(np.nanmax(np.abs(diff.to_numpy()))) or 0.01
    fig, ax = plt.subplots(figsize=(0.9 * len(arms) + 2.5, 0.6 * len(arms) + 1.6))
    sns.heatmap(
        diff,
        annot=labels.to_numpy(),
        fmt="",
        cmap="RdBu",
        vmin=-lim,
        vmax=lim,
        linewidths=0.5,
        annot_kws={"fontsize": 7},
        cbar_kws={"label": "test R@1, row minus column"},
        ax=ax,
    )
    ax.set(xlabel="", ylabel="")
    ax.tick_params(axis="x", rotation=30)
    return fig


def sensitivity(trials: pd.DataFrame, x: str = "margin") -> Figure | None:
    """Validation R@1 against ``x``, one colour per arm: every trial a point, and a line through the
    arm's mean in each fifth of the range (the arm's response to ``x``)."""
    d = trials.dropna(subset=[x, "best_val_r1"]) if x in trials else pd.DataFrame()
    if d.empty or "arm" not in d:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    arms = list(dict.fromkeys(d["arm"]))
    palette = dict(zip(arms, sns.color_palette(n_colors=len(arms)), strict=True))
    edges = np.linspace(float(d[x].min()), float(d[x].max()), 6)
    for arm in arms:
        part = d[d["arm"] == arm]
        ax.scatter(part[x], part["best_val_r1"], color=palette[arm], s=14, alpha=0.7)
        bins = np.clip(np.digitize(part[x], edges[1:-1]), 0, 4)
        means = part.groupby(bins).agg(x=(x, "mean"), y=("best_val_r1", "mean"))
        ax.plot(means["x"], means["y"], color=palette[arm], lw=1.6, label=f"{arm} (n={len(part)})")
    ax.set(xlabel=x, ylabel="validation Recall@1 (best epoch)")
    _legend_outside(ax)
    ax.legend(fontsize=6, bbox_to_anchor=(1.02, 1), loc="upper left")
    return fig


def best_so_far(trials: pd.DataFrame) -> Figure | None:
    """Each arm's best validation R@1 after each of its trials: where a line is flat at the end, more
    trials of that arm found nothing better (its budget was enough to find its best)."""
    d = trials.dropna(subset=["best_val_r1"]) if "best_val_r1" in trials else pd.DataFrame()
    if d.empty or "arm" not in d:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    by = "search" if "search" in d else "arm"  # with search repeats: each search its own line
    for arm, part in d.groupby(by, sort=False):
        part = part.sort_values("number")
        ax.step(np.arange(1, len(part) + 1), part["best_val_r1"].cummax(), where="post", label=str(arm))
    ax.set(xlabel="trials of the search", ylabel="best validation Recall@1 so far")
    ax.legend(fontsize=6, bbox_to_anchor=(1.02, 1), loc="upper left")
    return fig


def ranks(table: pd.DataFrame) -> Figure | None:
    """Each arm's test R@1 (mean, 95 % interval) on every dataset, arms ordered by mean rank."""
    if table.empty or table["dataset"].nunique() < 1:
        return None
    order = list(table.groupby("arm")["rank"].mean().sort_values().index)
    datasets = list(dict.fromkeys(table["dataset"]))
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(order) + 1.4))
    offsets = np.linspace(-0.2, 0.2, len(datasets)) if len(datasets) > 1 else [0.0]
    for off, ds in zip(offsets, datasets, strict=True):
        part = table[table["dataset"] == ds].set_index("arm").reindex(order)
        y = np.arange(len(order)) + off
        m = part["test_recall@1"].to_numpy()
        err = np.vstack([m - part["test_recall@1_low"].to_numpy(), part["test_recall@1_high"].to_numpy() - m])
        ax.errorbar(m, y, xerr=np.nan_to_num(err), fmt="o", capsize=2, label=ds)
    ax.set_yticks(range(len(order)), order, fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="test Recall@1 (mean, 95 % interval over seeds)")
    ax.legend(fontsize=7, title="dataset")
    return fig


def search_repeats(searches: pd.DataFrame) -> Figure | None:
    """Each arm's searches side by side: the validation R@1 each search's best reached (left) and
    its config's test R@1 (right: each evaluation seed a dot, the search's mean a marker). Arms
    whose searches scatter as widely as the arms differ are not ranked by one search."""
    if searches.empty or searches["repeat"].nunique() < 2:
        return None
    order = list(
        searches.groupby("arm", sort=False)["test_recall@1"].mean().sort_values(ascending=False).index
    )
    repeats = sorted(searches["repeat"].unique())
    offsets = np.linspace(-0.25, 0.25, len(repeats))
    seed_cols = [c for c in searches if c.startswith("test_recall@1_seed")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 0.45 * len(order) + 1.6), sharey=True)
    palette = sns.color_palette(n_colors=len(repeats))
    for off, r, colour in zip(offsets, repeats, palette, strict=True):
        part = searches[searches["repeat"] == r].set_index("arm").reindex(order)
        y = np.arange(len(order)) + off
        left.plot(part["val_recall@1"], y, "o", color=colour, label=f"search {r}")
        for col in seed_cols:
            right.plot(part[col], y, ".", color=colour, alpha=0.45, ms=4)
        right.plot(part["test_recall@1"], y, "D", color=colour, label=f"search {r} (mean over seeds)")
    left.set_yticks(range(len(order)), order, fontsize=7)
    left.invert_yaxis()
    left.set(xlabel="best validation Recall@1 of the search")
    right.set(xlabel="test Recall@1 of the search's config")
    right.legend(fontsize=6, bbox_to_anchor=(1.02, 1), loc="upper left")
    return fig
