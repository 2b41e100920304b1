"""What the console says: one line for a library's traceback, trial counts, what evaluate reused, and
progress of runs of minutes as time per run."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import study_file

from harness.cli import main


def test_a_librarys_traceback_is_one_line_in_the_log(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from harness.pipeline import setup_logging

    setup_logging()
    try:
        raise RuntimeError("database or disk is full")
    except RuntimeError:
        logging.getLogger("mlflow.store.db.utils").exception("(sqlite3.OperationalError)\n[SQL: INSERT ...]")
    err = capsys.readouterr().err
    assert "mlflow.store.db.utils: (sqlite3.OperationalError)" in err
    assert "Traceback" not in err and "[SQL" not in err


def test_the_console_counts_trials_and_says_what_evaluate_reused(
    cub: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = study_file(cub, tmp_path, evaluate={"top_n": 1, "seeds": 1, "references": False})
    assert main(["study", "run", "--config", str(path)]) == 0
    assert main(["evaluate", "--config", str(path)]) == 0
    assert main(["evaluate", "--config", str(path)]) == 0
    err = capsys.readouterr().err
    assert "tiny: trial 1 starts (2 of 2 taken, 1 finished); study ETA" in err
    assert "evaluate tiny: 2 of 2 runs already done, reused" in err


def test_progress_of_runs_of_minutes_is_time_per_run() -> None:
    from harness.progress import Progress

    p = Progress("evaluate x", 4, "runs")
    p.start -= 150  # one run took two and a half minutes
    p.done = 1
    assert "2.5 min per run" in p.line() and "runs/s" not in p.line()
