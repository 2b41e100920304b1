"""The final evaluation: distinct top configs, results named by what ran, ties broken by compute, and
two evaluations at once run each unit once."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import NAME, config, study_file, write
from mlflow.tracking import MlflowClient
from oracles import pml_accuracy
from processes import patience

from harness.cli import main

HARNESS = [sys.executable, "-m", "harness.cli", "--threads", "1"]


WRITE_OFTEN = """
import sys
from pathlib import Path
import pandas as pd
from harness.study.final import write_csv
df = pd.DataFrame({"x": range(2000)})
for _ in range(200):
    write_csv(df, Path(sys.argv[1]))
"""


def test_two_evaluations_at_once_run_each_unit_once(cub: Path, tmp_path: Path) -> None:

    path = study_file(cub, tmp_path, evaluate={"top_n": 1, "seeds": 2, "references": False})
    assert main(["study", "run", "--config", str(path)]) == 0
    procs = [
        subprocess.Popen([*HARNESS, "evaluate", "--config", str(path)], stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    codes = [p.wait(timeout=600) for p in procs]
    assert codes == [0, 0], [p.stderr.read()[-2000:] for p in procs if p.stderr]
    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    names = [
        r.info.run_name for r in client.search_runs([exp.experiment_id], "tags.`harness.phase` = 'test'")
    ]
    assert len(names) == len(set(names)) == 3  # the baseline and the best config with 2 seeds, once each


def test_two_evaluations_writing_one_table_at_once_both_succeed(tmp_path: Path) -> None:
    """Found by the test above failing once in three: both evaluations wrote test.csv through the
    same temp name, and the one whose temp the other had renamed away died with "cannot access
    .../test.tmp". Two processes now write one table 200 times each, at the same moment."""
    out = tmp_path / "test.csv"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITE_OFTEN, str(out)], stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        errors = [p.communicate(timeout=patience(300))[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [e[-1500:] for e in errors]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert len(pd.read_csv(out)) == 2000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.csv"]  # no temp file left behind


def test_equal_compute_breaks_ties_by_the_fewest_images() -> None:
    import pandas as pd

    from harness.report.tables import equal_compute_table

    curves = pd.DataFrame(
        {
            "number": [0, 0, 1, 1],
            "mining": ["semihard"] * 4,
            "family": ["online"] * 4,
            "images_processed": [38199.0, 50000.0, 25592.0, 30000.0],
            "val_recall@1": [0.7, 0.6, 0.7, 0.65],
        }
    )
    table, _ = equal_compute_table(curves)
    assert table["images to best overall"].tolist() == [25592.0]


def test_evaluate_top_n_holds_distinct_configs(data_root: Path, tmp_path: Path) -> None:
    """With nothing searched every trial has the same params: the top-N keeps one copy."""
    raw = config(data_root, tmp_path, n_trials=3)
    raw["search_space"] = {"mining": "semihard", "batch_p": 4, "batch_k": 2, "embedding_dim": 16}
    raw["evaluate"] = {"top_n": 3, "seeds": 1, "references": False}
    path = write(tmp_path, raw)
    assert main(["study", "run", "--config", str(path)]) == 0
    assert main(["evaluate", "--config", str(path)]) == 0
    test = pd.read_csv(tmp_path / "results" / NAME / "test.csv")
    assert list(test["kind"]) == ["baseline", "top"]


def test_an_evaluation_result_is_named_by_what_ran_not_by_its_rank(tmp_path: Path) -> None:
    from harness.params import TrialParams
    from harness.study import parse_config
    from harness.study.final import Evaluator, Unit

    ev = object.__new__(Evaluator)
    ev.uid, ev.split, ev.dir = "u1", "s1", tmp_path
    ev.cfg = parse_config({"name": "x", "dataset": "cub", "budget": {"n_trials": 1}})
    p = TrialParams(0.2, 8, 4, "cosine", "semihard", 1e-4, 128)
    first = Unit("top1-s0", "trial 7", "top", 1, 7, 7, 0.5, p, 8, 0)
    later = Unit("top2-s0", "trial 7", "top", 2, 7, 7, 0.5, p, 8, 0)  # a better trial came in
    assert ev.path(first) == ev.path(later)
    default = ev.path(first)
    ev.cfg = parse_config(
        {"name": "x", "dataset": "cub", "budget": {"n_trials": 1}, "evaluate": {"nmi_max_images": 50}}
    )
    assert ev.path(first) != default  # another NMI sample bound: another result
    ev.cfg = parse_config({"name": "x", "dataset": "cub", "budget": {"n_trials": 1}})
    ev._store(first, {"test_recall@1": 0.3, "rank": 1}, {"recall@1": np.ones(3)})
    row, q = ev.stored(later)
    assert row["rank"] == 2 and row["test_recall@1"] == 0.3 and q["recall@1"].shape == (3,)
    ev.path(first).write_bytes(b"PK\x03\x04 cut short")  # damaged: run it again, do not crash
    assert ev.stored(first) is None


def test_saved_test_embeddings_re_scored_by_pml_agree(cub: Path, tmp_path: Path) -> None:
    """Every final run's test embeddings are saved with their paths and labels; pytorch-metric-
    learning's AccuracyCalculator on them gives the harness's R@1, MAP@R and R-Precision to 1e-6."""
    import json

    import torch

    path = study_file(cub, tmp_path, evaluate={"top_n": 1, "seed": 0, "seeds": 2, "references": False})
    assert main(["study", "run", "--config", str(path)]) == 0
    assert main(["evaluate", "--config", str(path)]) == 0
    evaluation = tmp_path / "results" / NAME / "evaluation"
    saved = sorted((evaluation / "embeddings").glob("run-*.npz"))
    assert len(saved) == 2  # one config x 2 seeds (the baseline trains nothing)
    for file in saved:
        emb = np.load(file)
        row = json.loads(str(np.load(evaluation / file.name)["row"]))
        x, labels = torch.from_numpy(emb["embeddings"]), torch.from_numpy(emb["labels"])
        assert len(emb["paths"]) == len(labels) == x.shape[0] and str(emb["paths"][0]).endswith(".jpg")
        assert set(np.unique(emb["labels"])) <= set(range(101, 201))  # test classes only
        pml = pml_accuracy(str(emb["distance"])).get_accuracy(x, labels)
        assert row["test_recall@1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)
        assert row["test_map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)
        assert row["test_r_precision"] == pytest.approx(pml["r_precision"], abs=1e-6)
    # evaluate.export: best (the default): the best config's seeds, as TorchScript and ONNX
    models = sorted((evaluation / "models").glob("run-*"))
    assert [m.name for m in models] == [f.stem for f in saved]
    for folder in models:
        meta = json.loads((folder / "preprocessing.json").read_text())
        want = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx", "export": "model.pt2"}
        assert meta["files"] == want, meta["failed"]
        assert max(meta["max_abs_diff_vs_eager"].values()) <= meta["tolerance"]
        assert meta["config"].startswith("trial ") and meta["image_size"] == 32 and meta["trunk"] == "frozen"
    # the best config's first seed is registered in MLflow (the SQLite store) as <study>-best@champion
    import mlflow
    import pandas as pd

    test = pd.read_csv(tmp_path / "results" / NAME / "test.csv")
    registered = test.dropna(subset=["registered_model"])
    assert list(registered["registered_model"]) == [f"models:/{NAME}-best@champion"]
    assert list(registered["model_seed"]) == [0] and list(registered["rank"]) == [1]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    version = client.get_model_version_by_alias(f"{NAME}-best", "champion")
    assert version.tags["harness.seed"] == "0"
    run = client.get_run(version.run_id)
    assert run.data.tags["harness.phase"] == "test" and run.data.tags["harness.seed"] == "0"
    # a second evaluate reuses every stored run and registers nothing new
    assert main(["evaluate", "--config", str(path)]) == 0
    assert len(client.search_model_versions(f"name = '{NAME}-best'")) == 1
    # the report names the registered model and links its files
    assert main(["report", "--config", str(path)]) == 0
    page = tmp_path / "results" / NAME / "report" / "index.html"
    text = page.read_text()
    assert f"models:/{NAME}-best@champion" in text and "mlflow.pyfunc.load_model" in text
    (href,) = re.findall(r'href="([^"]*evaluation/models/run-[^"]*)"', text)
    assert (page.parent / href / "model.onnx").is_file()
