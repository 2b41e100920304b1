"""The Snakemake workflow: lint, dry runs (local and SLURM profiles), and one real run of .test/."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
from fixtures import make_cub
from helpers import REPO, snakemake
from mlflow.tracking import MlflowClient


def test_lint_is_clean() -> None:
    r = snakemake("--lint")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Congratulations" in r.stdout + r.stderr


@pytest.mark.parametrize("profile", ["local", "slurm"])
def test_dry_run_plans_every_stage(profile: str, tmp_path: Path) -> None:
    shutil.copy(REPO / ".test" / "study.yaml", tmp_path / "study.yaml")
    make_cub(tmp_path / "data", per_class=2)
    r = snakemake(
        "-n",
        "--profile",
        str(REPO / "workflow" / "profiles" / profile),
        "--directory",
        str(tmp_path),
        "--configfile",
        "study.yaml",
        cwd=tmp_path,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    for rule in (
        "freeze_config",
        "prepare_data",
        "create_study",
        "study_worker",
        "evaluate_shard",
        "evaluate",
        "report",
        "all",
    ):
        assert rule in out
    assert any(line.split() == ["study_worker", "2"] for line in out.splitlines())  # workers: 2 in .test/
    assert any(line.split() == ["evaluate_shard", "2"] for line in out.splitlines())  # evaluate.jobs: 2


def test_real_run_of_the_test_study(tmp_path: Path) -> None:
    shutil.copy(REPO / ".test" / "study.yaml", tmp_path / "study.yaml")
    make_cub(tmp_path / "data", per_class=4)
    r = snakemake("--cores", "2", "--directory", str(tmp_path), "--configfile", "study.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    study = tmp_path / "results" / "tiny"
    assert (study / "report" / "index.html").is_file()
    assert (study / "test.csv").is_file()
    # logs mirror outputs, and the Optuna trial lines land in the worker logs
    worker_logs = "".join(p.read_text() for p in (tmp_path / "logs" / "study_worker" / "tiny").glob("*.log"))
    assert "Trial 0 finished" in worker_logs
    assert "database is locked" not in worker_logs
    # long steps show progress on the console, with counts and an ETA (not only in the logs)
    console = r.stdout + r.stderr
    for job, words in (
        (
            "prepare_data/tiny",
            ("decode cub images at 32px: 800/800 images (100 %)", "features at 32px: 800/800"),
        ),
        ("study_worker/tiny/", ("epoch 2/2, val R@1", "ETA")),
        ("evaluate_shard/tiny/0", ("evaluate tiny: 1/", "test R@1")),
        ("evaluate_shard/tiny/1", ("evaluate tiny: 1/", "test R@1")),
    ):
        lines = [line for line in console.splitlines() if f"[{job}" in line]
        for w in words:
            assert any(w in line for line in lines), (job, w, lines)
    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    hpo = sorted(int(r.info.run_name) for r in runs if r.data.tags.get("harness.phase") == "hpo")
    assert hpo == [0, 1, 2]
    (parent,) = [r for r in runs if r.data.tags.get("harness.kind") == "study"]
    assert parent.info.status == "FINISHED"
    # a second invocation has nothing to do
    again = snakemake(
        "--cores", "2", "--directory", str(tmp_path), "--configfile", "study.yaml", cwd=tmp_path
    )
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr
    # a changed protocol is refused before Snakemake deletes any output (the frozen config first)
    frozen = (study / "config.yaml").read_bytes()
    changed = tmp_path / "changed.yaml"
    changed.write_text((tmp_path / "study.yaml").read_text() + "val_fraction: 0.3\n")
    refused = snakemake(
        "--cores", "2", "--directory", str(tmp_path), "--configfile", "changed.yaml", cwd=tmp_path
    )
    assert refused.returncode != 0
    assert "val_fraction: stored 0.2, this config 0.3" in refused.stdout + refused.stderr
    assert (study / "config.yaml").read_bytes() == frozen
    # Snakemake's own report: the study report (with its caption) plus the run's provenance
    rep = snakemake(
        "--directory", str(tmp_path), "--configfile", "study.yaml", "--report", "smk-report.zip", cwd=tmp_path
    )
    assert rep.returncode == 0, rep.stderr[-3000:]
    with zipfile.ZipFile(tmp_path / "smk-report.zip") as z:
        names = z.namelist()
        (page,) = [n for n in names if n.endswith("/index.html")]
        assert "<h1>Study tiny</h1>" in z.read(page).decode()
        assert "Study reports" in z.read("smk-report/report.html").decode()  # the rule's report category
    assert "Nothing to be done" in again.stdout + again.stderr
