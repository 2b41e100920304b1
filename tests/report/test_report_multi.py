"""One report page for two studies with the same search space: CUB and Cars (generated data)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from fixtures import make_cars, make_cub
from helpers import tiny_config
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.study import parse_config
from harness.study.config import write_config


@pytest.fixture(scope="module")
def two_studies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    tmp = tmp_path_factory.mktemp("multi")
    results = tmp / "results"
    roots = {
        "cub": make_cub(tmp / "cub", per_class=4, noise=60.0),
        "cars": make_cars(tmp / "cars", per_class=4, noise=60.0),
    }
    paths = []
    for dataset, root in roots.items():
        raw = tiny_config(root, results, n_trials=3) | {"name": f"multi-{dataset}", "dataset": dataset}
        raw["evaluate"] = {"top_n": 1, "seeds": 2}
        path = tmp / f"{dataset}.yaml"
        write_config(parse_config(raw), path)
        for argv in (["study", "run"], ["evaluate"]):
            assert main([*argv, "--config", str(path)]) == 0
        paths.append(path)
    return results, paths


def test_one_page_for_two_datasets(two_studies: tuple[Path, list[Path]]) -> None:
    results, paths = two_studies
    assert main(["report", *map(str, paths)]) == 0
    out = results / "report" / "multi-cub+multi-cars"
    page = (out / "index.html").read_text()
    assert "<h2>Across datasets</h2>" in page and 'id="fig-cross_dataset"' in page
    assert "<h2>Study multi-cub</h2>" in page and "<h2>Study multi-cars</h2>" in page
    assert 'id="fig-multi-cub-test_r1_ci"' in page and 'id="fig-multi-cars-test_r1_ci"' in page
    cross = pd.read_csv(out / "tables" / "cross_dataset.csv")
    assert sorted(cross["dataset"].unique()) == ["cars", "cub"]
    assert len(cross) == 2 * 3  # the 3 reference strategies on each dataset
    # the page is an artifact of each study's MLflow parent run
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    for name in ("multi-cub", "multi-cars"):
        exp = client.get_experiment_by_name(name)
        (parent,) = client.search_runs([exp.experiment_id], "tags.`harness.kind` = 'study'")
        assert [a.path for a in client.list_artifacts(parent.info.run_id, "report")][0].startswith("report/")
        assert "report/index.html" in [a.path for a in client.list_artifacts(parent.info.run_id, "report")]


def test_cross_dataset_figure_with_two_studies_on_one_dataset() -> None:
    from harness.report import figures

    rows = [
        {
            "study": s,
            "dataset": d,
            "mining": m,
            "test_recall@1": 0.3,
            "test_recall@1_low": 0.25,
            "test_recall@1_high": 0.35,
        }
        for s, d in (("cub-a", "cub"), ("cub-b", "cub"), ("cars-a", "cars"))
        for m in ("semihard", "random")
    ]
    fig = figures.cross_dataset(pd.DataFrame(rows))
    assert fig is not None
    assert len(fig.axes[0].patches) == 3 * 2  # one bar per (study, mining)
