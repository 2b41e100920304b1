"""A short comparison on the real Cars196 copy in ../shared/data (issue #15): the devkit layout with
labelled test annotations, the retrieval split (classes 1-98 / 99-196), two arms of two trials each,
their evaluation on the test classes and the report. A tiny random-init trunk keeps it to about a
minute on 2 cores; the real study is studies/cars-compare.yaml (docs/comparing.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import SHARED

from harness.cli import main

REAL = SHARED / "data" / "cars196-128"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (REAL / "devkit").is_dir(), reason=f"no Cars196-128 copy at {REAL}"),
]


def test_a_short_comparison_on_the_real_cars196(tmp_path: Path) -> None:
    raw = {
        "name": "cars-short",
        "dataset": "cars",
        "data_root": str(REAL),
        "results_dir": str(tmp_path / "results"),
        "image_size": 64,
        "cache_size": 64,
        "backbone": "test_efficientnet",
        "pretrained": False,
        "trunk": "frozen",
        "epochs": 1,
        "val_folds": 2,
        "budget": {"n_trials": 2},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "evaluate": {"seeds": 2},
        "compare": "mining",
        "search_space": {
            "mining": {"choices": ["semihard", "offline-semihard"]},
            "margin": {"low": 0.1, "high": 0.3},
            "batch_p": 16,
            "batch_k": 4,
            "embedding_dim": 64,
        },
    }
    path = tmp_path / "cars.yaml"
    path.write_text(yaml.safe_dump(raw))
    for argv in (["study", "run"], ["evaluate"], ["report"]):
        assert main([*argv, "--config", str(path)]) == 0, argv
    study = tmp_path / "results" / "cars-short"
    manifest = json.loads((study / "split_manifest.json").read_text())
    assert manifest["num_images"]["test"] == 8131  # classes 99-196 of the real copy
    assert sum(manifest["num_images"][k] for k in ("train", "val")) == 8054
    assert [len(f) for f in manifest["folds"]] == [49, 49]
    test = pd.read_csv(study / "test.csv")
    assert list(test["config"]) == ["baseline (no triplet training)", "semihard", "offline-semihard"]
    assert test["test_recall@1"].between(0, 1).all() and (test["n_seeds"][1:] == 2).all()
    arms = pd.read_csv(study / "arms.csv")
    assert (arms["trials"] == 2).all()
    assert (study / "report" / "index.html").is_file()
