"""The report reads only the current incarnation of a study, and reads its uids as text."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from helpers import NAME, config, write

from harness.cli import main


def test_the_report_drops_files_of_an_earlier_incarnation(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = config(data_root, tmp_path, n_trials=2)
    raw["evaluate"] = {"top_n": 1, "seeds": 1}
    path = write(tmp_path, raw)
    for argv in (["study", "run"], ["evaluate"]):
        assert main([*argv, "--config", str(path)]) == 0
    study_dir = tmp_path / "results" / NAME
    old = pd.read_csv(study_dir / "test.csv")
    (study_dir / "optuna.journal").unlink()  # the user deletes the journal and starts over
    raw["search_space"] = raw["search_space"] | {"mining": {"choices": ["batch-hard"]}}
    path = write(tmp_path, raw)
    assert main(["study", "run", "--config", str(path)]) == 0
    capsys.readouterr()
    assert main(["report", "--config", str(path)]) == 0
    page = (study_dir / "report" / "index.html").read_text()
    assert "earlier incarnation" in page
    assert old["config"].iloc[1] not in page.split("<h2>Search</h2>")[0]  # no stale headline
    assert "No final evaluation" in page
    assert not (study_dir / "report" / "tables" / "test.csv").exists()


def test_the_report_reads_a_numeric_looking_uid_as_text(tmp_path: Path) -> None:
    from harness.report.tables import this_incarnation

    path = tmp_path / "test.csv"
    pd.DataFrame({"config": ["a"], "study_uid": ["012e45678901"]}).to_csv(path, index=False)
    notes: list[str] = []
    assert this_incarnation(path, "012e45678901", notes) is not None and not notes
