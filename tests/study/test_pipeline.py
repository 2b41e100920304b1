"""End to end on a generated CUB copy: study run -> evaluate -> report, all in-process on CPU.

One module-scoped run feeds most tests (tiny random-init timm trunk, frozen, 32 px, 4 trials of
2 epochs); nothing is written outside tmp directories.
"""

from __future__ import annotations

import html
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from fixtures import make_cub
from helpers import CHECK, NAME, chromium, tiny_config
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

import harness.data.cache
import harness.data.images
import harness.study.data
import harness.study.final
import harness.study.worker
from harness.cli import main


def write_config(tmp: Path, n_trials: int = 4) -> tuple[Path, Path]:
    root = make_cub(tmp / "data", per_class=4, noise=60.0)  # noisy: validation R@1 is not saturated
    results = tmp / "results"
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(root, results, n_trials), sort_keys=False))
    return path, results


@dataclass
class Run:
    tmp: Path
    config: Path
    results: Path

    @property
    def study_dir(self) -> Path:
        return self.results / NAME

    def study(self) -> optuna.Study:
        storage = JournalStorage(JournalFileBackend(str(self.study_dir / "optuna.journal")))
        return optuna.load_study(study_name=NAME, storage=storage)

    def mlflow(self) -> tuple[MlflowClient, str]:
        client = MlflowClient(tracking_uri=f"sqlite:///{self.results / 'mlflow.db'}")
        exp = client.get_experiment_by_name(NAME)
        assert exp is not None
        return client, exp.experiment_id

    def runs(self, phase: str) -> list:
        client, exp = self.mlflow()
        return client.search_runs([exp], filter_string=f"tags.`harness.phase` = '{phase}'")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("pipeline")
    config, results = write_config(tmp)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        mp.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))  # an idle host, whatever this one does
        for argv in (["study", "run"], ["evaluate"], ["report"]):
            assert main([*argv, "--config", str(config)]) == 0, argv
    assert not (tmp / "mlruns").exists()  # tracking went to results/mlflow.db
    return Run(tmp, config, results)


def test_split_manifest_is_class_disjoint(pipeline: Run) -> None:
    m = json.loads((pipeline.study_dir / "split_manifest.json").read_text())
    c = {k: set(v) for k, v in m["classes"].items()}
    assert not (c["train"] & c["val"] or c["train"] & c["test"] or c["val"] & c["test"])
    assert c["test"] == set(range(101, 201))
    assert c["train"] | c["val"] == set(range(1, 101))
    assert m["num_classes"] == {"train": 80, "val": 20, "test": 100}
    assert m["num_images"] == {"train": 320, "val": 80, "test": 400}


def test_study_has_the_budgeted_trials(pipeline: Run) -> None:
    trials = pipeline.study().get_trials()
    assert len(trials) == 4
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    for t in trials:
        assert set(t.params) == {"margin", "mining", "distance", "batch_p", "batch_k"}
        assert t.user_attrs["epochs_run"] == 2


def test_mlflow_one_hpo_run_per_trial(pipeline: Run) -> None:
    client, _ = pipeline.mlflow()
    runs = pipeline.runs("hpo")
    trials = {t.number: t for t in pipeline.study().get_trials()}
    assert sorted(int(r.data.tags["harness.trial"]) for r in runs) == sorted(trials)
    for r in runs:
        t = trials[int(r.data.tags["harness.trial"])]
        assert r.info.run_name == str(t.number)
        assert t.user_attrs["mlflow_run_id"] == r.info.run_id
        assert r.info.status == "FINISHED"
        for k, v in t.params.items():
            assert r.data.params[k] == str(v)
        assert r.data.params["embedding_dim"] == "16" and r.data.params["epochs"] == "2"
        history = client.get_metric_history(r.info.run_id, "val_recall_at_1")
        assert sorted(m.step for m in history) == [1, 2]
        assert max(m.value for m in history) == pytest.approx(t.value)
    assert len(pipeline.runs("test")) == 1 + (2 + 3) * 2  # baseline + (top 2 + 3 references) x 2 seeds


def test_test_csv_has_baseline_top_configs_and_references(pipeline: Run) -> None:
    df = pd.read_csv(pipeline.study_dir / "test.csv")
    assert list(df["kind"]) == ["baseline", "top", "top", "reference", "reference", "reference"]
    assert df["config"].iloc[0].startswith("baseline")
    assert df["test_recall@1"].between(0, 1).all()
    done = [t for t in pipeline.study().get_trials() if t.state == TrialState.COMPLETE]
    top = sorted(done, key=lambda t: t.value, reverse=True)[:2]
    assert [int(x) for x in df["trial"].iloc[1:3]] == [t.number for t in top]
    refs = df[df["kind"] == "reference"]
    assert sorted(refs["mining"]) == ["offline-hard", "random", "semihard"]  # the searched strategies
    assert (refs["margin"] == 0.2).all()
    assert (df["n_seeds"].iloc[1:] == 2).all() and df["n_seeds"].iloc[0] == 1


def test_intervals_come_from_the_seed_runs(pipeline: Run) -> None:
    from scipy import stats as st

    df = pd.read_csv(pipeline.study_dir / "test.csv").set_index("config")
    runs = pd.read_csv(pipeline.study_dir / "test_runs.csv")
    assert len(runs) == 1 + 5 * 2
    for config, part in runs[runs["kind"] != "baseline"].groupby("config"):
        x = part["test_recall@1"].to_numpy()
        assert sorted(part["seed"]) == [0, 1]
        assert df.loc[config, "test_recall@1"] == pytest.approx(x.mean())
        if x.std() > 0:
            low, high = st.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=st.sem(x))
            assert (
                df.loc[config, "test_recall@1_low"],
                df.loc[config, "test_recall@1_high"],
            ) == pytest.approx((low, high))
    base = df.loc[df.index[0]]  # one deterministic run: a bootstrap interval over the test queries
    assert base["interval"] == "bootstrap over queries"
    assert base["test_recall@1_low"] <= base["test_recall@1"] <= base["test_recall@1_high"]


def test_comparisons_pair_the_best_config_with_each_reference_and_the_baseline(pipeline: Run) -> None:
    comp = pd.read_csv(pipeline.study_dir / "comparisons.csv")
    test = pd.read_csv(pipeline.study_dir / "test.csv")
    best = test[test["kind"] == "top"]["config"].iloc[0]
    assert (comp["config"] == best).all()
    assert len(comp) == (3 + 1) * 2  # 3 references + baseline, for R@1 and MAP@R
    vs_refs = comp[comp["versus"].str.startswith("reference")]
    assert set(vs_refs["method"]) == {"paired t over seeds"}
    vs_base = comp[comp["versus"].str.startswith("baseline")]
    assert set(vs_base["method"]) == {"t over seeds (baseline fixed)"}  # retraining variance counts
    base_r1 = test[test["kind"] == "baseline"]["test_recall@1"].iloc[0]
    seeds_r1 = pd.read_csv(pipeline.study_dir / "test_runs.csv").query("config == @best")["test_recall@1"]
    row = vs_base[vs_base["metric"] == "recall@1"].iloc[0]
    assert row["difference"] == pytest.approx(seeds_r1.mean() - base_r1)
    runs = pd.read_csv(pipeline.study_dir / "test_runs.csv")
    ref = vs_refs.iloc[0]
    a = runs[runs["config"] == best].sort_values("seed")[f"test_{ref['metric']}"].to_numpy()
    b = runs[runs["config"] == ref["versus"]].sort_values("seed")[f"test_{ref['metric']}"].to_numpy()
    assert ref["difference"] == pytest.approx((a - b).mean())


def test_evaluate_retrains_with_the_trials_fixed_params(pipeline: Run) -> None:
    df = pd.read_csv(pipeline.study_dir / "test.csv")
    assert (df["embedding_dim"].iloc[1:] == 16).all()


FIGURES = (
    "test_r1_ci",
    "r1_by_mining_distance",
    "r1_vs_margin",
    "r1_vs_batch",
    "throughput",
    "history",
    "importances",
    "pareto",
    "compute_curves",
)


def test_report_page(pipeline: Run) -> None:
    report = pipeline.study_dir / "report"
    page = (report / "index.html").read_text()
    for key in FIGURES:
        assert f'id="fig-{key}"' in page, key
        assert (report / "figures" / f"{key}.png").is_file()
    assert page.count('src="data:image/png;base64,') == len(FIGURES)
    assert "not drawn" not in page
    assert "baseline (no triplet training)" in page and "Best config <b>trial" in page
    for table in ("test", "comparisons", "equal_compute", "strategies", "trials", "manifest", "environment"):
        assert (report / "tables" / f"{table}.csv").is_file()
        assert f'id="table-{table}"' in page


def test_a_study_measured_on_a_busy_host_still_shows_its_throughput(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #16, item 7: with the host's load above its CPUs for every trial, the report left the
    throughput figure out. It is drawn, each cell marked as measured under load, with the warning."""
    config, results = write_config(tmp_path, n_trials=2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))  # the load, injected
    for argv in (["study", "run"], ["report"]):
        assert main([*argv, "--config", str(config)]) == 0, argv
    page = (results / NAME / "report" / "index.html").read_text()
    assert 'id="fig-throughput"' in page and "not drawn" not in page.split('id="fig-throughput"')[0][-300:]
    assert "2 of 2 trials ran while the host&#x27;s load exceeded" in page


def test_rerun_adds_no_trials_and_decodes_nothing(pipeline: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = pipeline.results / "cache"
    arrays = sorted(cache.rglob("*.npy"))
    assert [p.parent.name for p in arrays] == ["features", "images"]
    mtimes = [p.stat().st_mtime_ns for p in arrays]

    def no_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("a rerun decoded an image")

    monkeypatch.setattr(harness.data.images, "decode", no_decode)
    monkeypatch.setattr(harness.data.cache, "decode", no_decode)
    monkeypatch.chdir(pipeline.tmp)
    assert main(["study", "run", "--config", str(pipeline.config)]) == 0
    assert len(pipeline.study().get_trials()) == 4
    assert len(pipeline.runs("hpo")) == 4
    assert [p.stat().st_mtime_ns for p in arrays] == mtimes
    assert sorted(cache.rglob("*.npy")) == arrays


def test_hpo_never_reads_test_classes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, results = write_config(tmp_path, n_trials=2)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("hyperparameter search asked for the test split")

    monkeypatch.setattr(harness.study.data, "final_sources", forbidden)
    monkeypatch.setattr(harness.study.final, "final_sources", forbidden)
    objectives: list = []

    class Recording(harness.study.worker.Objective):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            objectives.append(self)

    monkeypatch.setattr(harness.study.worker, "Objective", Recording)
    monkeypatch.chdir(tmp_path)
    assert main(["study", "run", "--config", str(config)]) == 0

    assert len(objectives) == 1
    m = json.loads((results / NAME / "split_manifest.json").read_text())["classes"]
    obj = objectives[0]
    train_src, val_src = obj.sources.value
    train = set(np.unique(train_src.labels.cpu().numpy()).tolist())
    val = set(np.unique(val_src.labels.cpu().numpy()).tolist())
    assert train == set(m["train"]) and val == set(m["val"])
    assert not (train | val) & set(m["test"])


# --- the report in a real browser ------------------------------------------------------------------


def test_report_in_headless_chromium(pipeline: Run) -> None:
    """Every figure decodes in a real browser (no broken image), every table has its CSV's rows."""
    report = pipeline.study_dir / "report"
    page = (report / "index.html").read_text()
    probe = report / ".browser-check.html"  # a copy beside the page, so relative links resolve alike
    probe.write_text(page.replace("</body>", CHECK + "</body>"))
    try:
        dom = chromium("--window-size=1200,3000", "--dump-dom", probe.as_uri())
    finally:
        probe.unlink()
    match = re.search(r'<pre id="harness-check">(.*?)</pre>', dom.stdout, re.S)
    assert match, dom.stderr[-2000:]
    found = json.loads(html.unescape(match.group(1)))
    assert len(found["images"]) == len(FIGURES)
    assert all(i["ok"] for i in found["images"]), [i["alt"] for i in found["images"] if not i["ok"]]
    for key, rows in found["tables"].items():
        assert rows == len(pd.read_csv(report / "tables" / f"{key}.csv")), key
    assert found["tables"]["trials"] == len(pipeline.study().trials)
    assert found["tables"]["test"] == 6
    assert found["width"] == 1200
    assert "table-test" not in found["overflow"], found["overflow"]  # no sideways scroll for the finals

    shot = pipeline.tmp / "report.png"
    r = chromium("--window-size=1200,3000", f"--screenshot={shot}", (report / "index.html").as_uri())
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (3000, 1200)
    assert pixels.std() > 20  # figures and tables drawn, not a blank page
