"""A study on a list of the user's own with queries and a gallery, end to end: the split manifest
records the protocol, the test numbers score each query against the gallery only (re-scored by
pytorch-metric-learning from the saved embeddings), and the report says so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fixtures import make_cub
from helpers import NAME, tiny_config, write
from oracles import pml_accuracy

from harness.cli import main
from harness.data import get_dataset

TRAIN_CLASSES = 20


def listed(root: Path) -> Path:
    """40 classes of 3 images: 1-20 train; in each test class the first image is the query and the
    two others its gallery."""
    cub = get_dataset("cub").load(root, strict_counts=False)
    frame = pd.DataFrame({"path": [f"images/{p}" for p in cub.paths], "label": cub.labels})
    frame["split"] = np.where(frame["label"] <= TRAIN_CLASSES, "train", "test")
    first = ~frame.duplicated("label")
    frame["is_query"], frame["is_gallery"] = first.astype(int), (~first).astype(int)
    path = root / "list.csv"
    frame.to_csv(path, index=False)
    return path


def test_a_query_gallery_study_scores_queries_against_the_gallery(tmp_path: Path) -> None:
    data = listed(make_cub(tmp_path / "data", n_classes=40, per_class=3))
    raw = tiny_config(data, tmp_path / "results", n_trials=2) | {"dataset": "csv", "epochs": 1}
    raw["evaluate"] = {"top_n": 1, "seed": 0, "seeds": 1, "references": False}
    path = write(tmp_path, raw)
    for argv in (["study", "run"], ["evaluate"], ["report"]):
        assert main([*argv, "--config", str(path)]) == 0
    study_dir = tmp_path / "results" / NAME
    manifest = json.loads((study_dir / "split_manifest.json").read_text())
    assert manifest["protocol"] == {"test": "query-gallery", "queries": 20, "gallery": 40}
    assert manifest["classes_split"] == "given" and manifest["classes"]["test"] == list(range(21, 41))

    evaluation = study_dir / "evaluation"
    saved = sorted((evaluation / "embeddings").glob("run-*.npz"))
    assert len(saved) == 1
    emb = np.load(saved[0])
    row = json.loads(str(np.load(evaluation / saved[0].name)["row"]))
    q, g = emb["is_query"], emb["is_gallery"]
    assert q.sum() == 20 and g.sum() == 40 and not (q & g).any()
    x, y = torch.from_numpy(emb["embeddings"]), torch.from_numpy(emb["labels"])
    pml = pml_accuracy(str(emb["distance"])).get_accuracy(x[q], y[q], x[g], y[g], ref_includes_query=False)
    assert row["test_recall@1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)
    assert row["test_map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)
    assert row["test_r_precision"] == pytest.approx(pml["r_precision"], abs=1e-6)

    page = (study_dir / "report" / "index.html").read_text()
    assert (
        "scored <b>query against gallery</b>: 20 queries, each ranked against the 40 gallery images" in page
    )
    assert "the split the data gives" in page


def test_a_study_whose_splits_share_classes_runs_when_the_user_opts_out(tmp_path: Path) -> None:
    """class_disjoint: false (seen-class retrieval): each image stays in its row's split through the
    search and the final evaluation, and the manifest says the split shares classes."""
    root = make_cub(tmp_path / "data", n_classes=24, per_class=4)
    cub = get_dataset("cub").load(root, strict_counts=False)
    frame = pd.DataFrame({"path": [f"images/{p}" for p in cub.paths], "label": cub.labels})
    frame["split"] = np.where(frame.groupby("label").cumcount() >= 2, "test", "train")  # every class both
    frame.to_csv(root / "list.csv", index=False)
    raw = tiny_config(root / "list.csv", tmp_path / "results", n_trials=1) | {"dataset": "csv", "epochs": 1}
    raw["evaluate"] = {"top_n": 1, "seed": 0, "seeds": 1, "references": False, "export": "none"}
    path = write(tmp_path, raw)
    assert main(["study", "run", "--config", str(path)]) == 2  # refused: classes in two splits
    raw["class_disjoint"] = False
    path = write(tmp_path, raw)
    for argv in (["study", "run"], ["evaluate"], ["report"]):
        assert main([*argv, "--config", str(path)]) == 0
    study_dir = tmp_path / "results" / NAME
    page = (study_dir / "report" / "index.html").read_text()
    assert "sharing classes with training (class_disjoint: false: retrieval of seen classes)" in page
    manifest = json.loads((study_dir / "split_manifest.json").read_text())
    assert manifest["class_disjoint"] is False and manifest["num_images"]["test"] == 48
    assert len(manifest["overlap"]["train_test"]) == 24 - manifest["num_classes"]["val"]
    test = pd.read_csv(study_dir / "test.csv")
    assert len(test) == 2 and test["test_recall@1"].between(0, 1).all()  # the baseline and the best
