"""The report's figures and tables read right (issue #11): each defect seen on a Cars196 run."""

from __future__ import annotations

from pathlib import Path

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd

from harness.report import figures as F
from harness.report.build import _headline, _map_disagreement
from harness.report.page import _formatters
from harness.report.tables import curves_frame, equal_compute_table, final_table, strategy_table


def trials(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df["batch"] = df["batch_p"].astype(str) + "×" + df["batch_k"].astype(str)
    df["batch_size"] = df["batch_p"] * df["batch_k"]
    return df


ROWS = [
    # number, mining, distance, P, K, value, img/s
    (0, "semihard", "cosine", 8, 4, 0.30, 900.0),
    (1, "semihard", "euclidean", 16, 4, 0.32, 1500.0),
    (2, "hard", "cosine", 8, 4, 0.25, 950.0),
    (3, "batch-hard", "euclidean", 32, 2, 0.28, 2000.0),  # batch-hard: one trial, one batch size
    (4, "semihard", "squared_euclidean", 8, 2, 0.31, 800.0),
]


def done_frame() -> pd.DataFrame:
    cols = ("number", "mining", "distance", "batch_p", "batch_k", "value", "train_img_per_s")
    df = trials([dict(zip(cols, r, strict=True)) for r in ROWS])
    df["state"] = "COMPLETE"
    df["margin"] = [0.1, 0.2, 0.3, 0.4, 0.5]
    return df


def test_throughput_cells_sit_on_their_strategy_and_batch() -> None:
    """Side-by-side bars per batch size drifted off their mining tick; a heatmap cell cannot."""
    fig = F.throughput(done_frame())
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["batch-hard", "hard", "semihard"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["8×2", "8×4", "16×4", "32×2"]  # by batch size
    texts = {(round(t.get_position()[0], 1), round(t.get_position()[1], 1)): t.get_text() for t in ax.texts}
    assert texts[(3.5, 0.5)] == "2,000\n(n=1)"  # batch-hard row, 32×2 column, the only trial
    assert texts[(1.5, 1.5)] == "950\n(n=1)"
    assert sum(bool(t) for t in texts.values()) == 5  # no bar for a combination that never ran


def _cells(fig: F.Figure) -> dict[tuple[float, float], str]:
    ax = fig.axes[0]
    return {(round(t.get_position()[0], 1), round(t.get_position()[1], 1)): t.get_text() for t in ax.texts}


def test_throughput_marks_what_was_measured_under_contention() -> None:
    """A trial that ran beside other work is left out of its cell's mean; a cell of only such trials
    shows their mean marked, so a busy machine never loses the figure (issue #16, item 7)."""
    df = done_frame()
    extra = df.iloc[[0]].assign(number=5, train_img_per_s=300.0)  # semihard 8×4 again, measured busy
    df = pd.concat([df, extra], ignore_index=True)
    df["contended"] = [False, False, False, True, False, True]
    cells = _cells(F.throughput(df))
    assert cells[(3.5, 0.5)] == "2,000\n(n=1, under load)"  # batch-hard: its only trial ran busy
    assert cells[(1.5, 2.5)] == "900\n(n=2, 1 under load left out)"  # semihard 8×4: the clean mean
    df["contended"] = True  # everything measured on a loaded machine: the figure is still drawn
    assert all("under load" in t for t in _cells(F.throughput(df)).values() if t)


def test_mining_distance_points_keep_their_distance_colour_and_the_legend_matches() -> None:
    df = done_frame()
    fig = F.r1_by_mining_distance(df)
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["cosine", "euclidean", "squared_euclidean"]  # only distances present
    colours = {
        t.get_text(): h.get_markerfacecolor()
        for t, h in zip(ax.get_legend().get_texts(), ax.get_legend().legend_handles, strict=True)
    }
    points = [c for c in ax.collections if len(c.get_offsets())]
    batch_hard = [c for c in points if np.isclose(c.get_offsets()[:, 1], 0.28).any()]
    assert batch_hard, "the single batch-hard trial is drawn"
    face = batch_hard[0].get_facecolors()[0]
    assert mcolors.to_hex(face) == mcolors.to_hex(colours["euclidean"])  # its distance's colour


def test_margin_panels_share_the_x_axis() -> None:
    fig = F.r1_vs_margin(done_frame())
    limits = {ax.get_xlim() for ax in fig.axes if ax.get_xlabel() == "margin"}
    assert len(limits) == 1
    lo, hi = limits.pop()
    assert lo < 0.1 and hi > 0.5


def test_pareto_draws_contended_trials_hollow_and_keeps_them_off_the_front() -> None:
    df = done_frame()
    df["contended"] = [False, False, False, True, False]  # the fastest trial ran on a loaded host
    fig = F.pareto(df)
    ax = fig.axes[0]
    front = [line for line in ax.get_lines() if line.get_label() == "Pareto front"][0]
    assert 2000.0 not in list(front.get_xdata())
    assert "measured under host contention" in [t.get_text() for t in ax.get_legend().get_texts()]


# --- tables ----------------------------------------------------------------------------------------


def study_frame() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two trials per strategy; the pruned one peaked before it was pruned."""
    df = done_frame().iloc[:3].copy()
    df.loc[2, "state"] = "PRUNED"
    df.loc[2, "value"] = 0.20  # Optuna: a pruned trial's value is its LAST score
    df["best_val_r1"] = [0.30, 0.32, 0.27]  # its best epoch was 0.27
    curves = [
        [[100.0, 0.25], [200.0, 0.30]],
        [[100.0, 0.29], [200.0, 0.32]],
        [[100.0, 0.27], [200.0, 0.20]],
    ]
    df["curve"] = curves
    df["images_processed"] = 200.0
    return df, curves_frame(df)


def test_the_strategy_and_equal_compute_tables_agree_on_each_best() -> None:
    df, curves = study_frame()
    strat = strategy_table(df).set_index("mining")
    eq, budget = equal_compute_table(curves)
    eq = eq.set_index("mining")
    assert budget == 200.0
    for mining in ("semihard", "hard"):
        assert strat.loc[mining, "best_val_r1"] == eq.loc[mining, "best val R@1 overall"]
    assert strat.loc["hard", "best_val_r1"] == 0.27  # not the pruned trial's last score


def test_throughput_prints_as_whole_images_per_second() -> None:
    df = pd.DataFrame({"train img/s": [523.25, 12345.6], "lr": [1.5e-4, 2e-3], "host_load": [1.23, 2.0]})
    f = _formatters(df)
    assert [f["train img/s"](v) for v in df["train img/s"]] == ["523", "12,346"]
    assert f["lr"](1.5e-4) == "1.50e-04"
    assert f["host_load"](1.23) == "1.2"


def test_final_table_is_narrow_and_keeps_epochs_lr_and_dim() -> None:
    row = {
        "config": "trial 16",
        "kind": "top",
        "n_seeds": 3,
        "interval": "t over seeds",
        "val_recall@1": 0.4,
        "epochs": 8,
        "mining": "semihard",
        "distance": "cosine",
        "margin": 0.069,
        "batch_p": 32.0,
        "batch_k": 8.0,
        "lr": 2.2e-4,
        "embedding_dim": 512.0,
    }
    for m in ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "nmi"):
        row |= {f"test_{m}": 0.3, f"test_{m}_low": 0.29, f"test_{m}_high": 0.31}
    out = final_table(pd.DataFrame([row]), "frozen")
    assert list(out.columns)[-3:] == ["lr", "dim", "epochs"] and "P×K" in out.columns
    assert "blocks" not in out.columns and "trunk lr" not in out.columns  # not a partial trunk
    assert out.loc[0, "P×K"] == "32×8" and out.loc[0, "lr"] == "2.2e-04" and out.loc[0, "dim"] == "512"
    assert len(out.columns) <= 14


# --- the headline -----------------------------------------------------------------------------------


def comparisons(r1_base: tuple[float, float, float], map_base: tuple, map_ref: tuple) -> pd.DataFrame:
    rows = []
    for versus, metric, (d, lo, hi) in (
        ("baseline (no triplet training)", "recall@1", r1_base),
        ("baseline (no triplet training)", "map@r", map_base),
        ("reference semihard m=0.2", "recall@1", (0.02, 0.01, 0.03)),
        ("reference semihard m=0.2", "map@r", map_ref),
    ):
        rows.append({"versus": versus, "metric": metric, "difference": d, "low": lo, "high": hi})
    return pd.DataFrame(rows)


def test_the_headline_says_when_map_at_r_ranks_the_best_config_below_a_reference() -> None:
    comp = comparisons((0.01, 0.005, 0.015), (0.01, 0.005, 0.02), (-0.004, -0.006, -0.002))
    base_r1 = comp.iloc[0]
    text = _map_disagreement(comp, "baseline (no triplet training)", base_r1)
    assert "The metrics disagree" in text and "below 1 reference" in text and "semihard" in text
    agree = comparisons((0.01, 0.005, 0.015), (0.01, 0.005, 0.02), (0.004, 0.002, 0.006))
    assert _map_disagreement(agree, "baseline (no triplet training)", agree.iloc[0]) == ""
    flipped = comparisons((0.01, 0.005, 0.015), (-0.01, -0.02, -0.005), (0.004, 0.002, 0.006))
    assert "below the baseline instead" in _map_disagreement(
        flipped, "baseline (no triplet training)", flipped.iloc[0]
    )


def test_headline_without_an_evaluation_of_this_incarnation() -> None:
    class D:
        test = None
        comparisons = None
        trials = pd.DataFrame({"number": [0, 1], "state": ["COMPLETE", "FAIL"]})

    assert "No final evaluation" in _headline(D())  # type: ignore[arg-type]


def test_headline_of_a_study_whose_trials_all_failed_does_not_send_to_evaluate(tmp_path: Path) -> None:
    """Issue #16, item 17: 'run harness evaluate' would fail on such a study. Issue #19.5: the
    headline says why the trials failed, and points to error.txt only where it was written."""

    class D:
        test = None
        comparisons = None
        trials = pd.DataFrame({"number": [0, 1], "state": ["FAIL", "FAIL"]})

        class cfg:  # noqa: N801
            study_dir = tmp_path / "x"

    text = _headline(D())  # type: ignore[arg-type]
    assert "No trial completed (2 failed: no reason recorded (2 trials))" in text
    assert "harness evaluate" not in text and "error.txt" not in text  # none was written
    D.trials = D.trials.assign(fail_reason=["loss is nan at epoch 1; lower lr", None])
    (tmp_path / "x" / "trials" / "0").mkdir(parents=True)
    (tmp_path / "x" / "trials" / "0" / "error.txt").write_text("trial 0 failed: loss is nan\n")
    text = _headline(D())  # type: ignore[arg-type]
    assert "loss is nan at epoch 1; lower lr (1 trial); no reason recorded (1 trial)" in text
    assert f"{tmp_path / 'x' / 'trials'}/&lt;n&gt;/error.txt" in text


def test_strategy_table_of_trials_that_never_reached_an_epoch_has_no_throughput() -> None:
    """Issue #16, item 17: the trial count was written into mean_train_img_per_s."""
    df = pd.DataFrame(
        {"number": [0, 1, 2], "mining": ["semihard"] * 3, "state": ["FAIL"] * 3, "best_val_r1": [np.nan] * 3}
    )
    table = strategy_table(df)
    assert table["failed"].tolist() == [3] and table["mean_train_img_per_s"].isna().all()
