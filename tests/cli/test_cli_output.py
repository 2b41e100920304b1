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


def test_a_hung_job_fails_its_test_with_the_jobs_python_stack(tmp_path: Path) -> None:
    """A rule script's process answers ``kill -USR1`` with its threads' stacks in its log and goes on;
    a test's ``run_group`` past its limit fails naming the group's members and those stacks."""
    import sys

    from processes import patience, run_group

    (tmp_path / "logs").mkdir()
    script = tmp_path / "hung_rule.py"
    script.write_text(
        "import time\n"
        "from harness.pipeline import rule_logging\n"
        "rule_logging('logs/hung_rule.log')\n"
        "def waiting_for_a_lock_nobody_releases():\n"
        "    time.sleep(600)\n"
        "waiting_for_a_lock_nobody_releases()\n"
    )
    with pytest.raises(AssertionError) as e:
        run_group([sys.executable, str(script)], timeout=patience(20), cwd=tmp_path)
    said = str(e.value)
    assert "ran past" in said and f"{script}" in said  # the member, by its command line
    assert "--- logs/hung_rule.log" in said
    assert 'File "' in said and "in waiting_for_a_lock_nobody_releases" in said
