"""A CSV listing the real CUB-128 copy with the official class split is the same dataset as
``dataset: cub``: the same split manifest classes, and the same test numbers from the demo's study
(its config with a smaller budget: 3 trials of 2 epochs, the best config re-trained with 2 seeds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import REPO, SHARED
from processes import harness

REAL = SHARED / "data" / "cub200-128" / "CUB_200_2011"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (REAL / "images.txt").is_file(), reason=f"no CUB-128 copy at {REAL}"),
]


def cub_as_csv(dest: Path) -> Path:
    """``dest/cub.csv``: every image of the official files, in their order, with absolute paths."""
    ids = dict(line.split() for line in (REAL / "image_class_labels.txt").read_text().splitlines())
    rows = []
    for line in (REAL / "images.txt").read_text().splitlines():
        image_id, rel = line.split(maxsplit=1)
        label = int(ids[image_id])
        rows.append(
            {"path": str(REAL / "images" / rel), "label": label, "split": "train" if label <= 100 else "test"}
        )
    path = dest / "cub.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def run(dataset: str, root: Path, results: Path, tmp_path: Path) -> tuple[dict, pd.DataFrame]:
    raw = yaml.safe_load((REPO / "studies" / "cub-demo.yaml").read_text())
    raw |= {
        "name": f"demo-{dataset}",
        "dataset": dataset,
        "data_root": str(root),
        "download": False,
        "results_dir": str(results),
        "epochs": 2,
        "budget": {"n_trials": 3},
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 3},
        "pruner": {"name": "none"},
        "evaluate": {"top_n": 1, "seed": 0, "seeds": 2, "references": False, "export": "none"},
    }
    path = tmp_path / f"{dataset}.yaml"
    path.write_text(yaml.safe_dump(raw))
    for step in (["study", "run"], ["evaluate"]):
        r = harness(*step, "--config", str(path), timeout=1800, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
    manifest = yaml.safe_load((results / raw["name"] / "split_manifest.json").read_text())
    return manifest, pd.read_csv(results / raw["name"] / "test.csv")


def test_a_csv_of_cub_gives_the_numbers_of_dataset_cub(tmp_path: Path) -> None:
    listed = cub_as_csv(tmp_path)
    a, test_a = run("cub", REAL, tmp_path / "results", tmp_path)
    b, test_b = run("csv", listed, tmp_path / "results", tmp_path)
    assert a["classes"] == b["classes"] and a["hash"] == b["hash"]
    assert a["num_images"] == b["num_images"] and b["classes_split"] == "given"
    numbers = [c for c in test_a.columns if c.startswith(("test_", "val_"))]
    assert numbers and len(test_a) == len(test_b)
    for c in numbers:
        assert np.allclose(test_a[c].to_numpy(float), test_b[c].to_numpy(float), rtol=1e-6, equal_nan=True), c
