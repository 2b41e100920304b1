"""workers_per_gpu (issue #9): one worker job runs N worker processes sharing its device."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from processes import fault_config, harness, open_study


@pytest.mark.slow
def test_one_worker_job_runs_n_processes_that_share_the_budget(tmp_path: Path) -> None:
    config = fault_config(tmp_path, "group", n_trials=4)
    raw = yaml.safe_load(config.read_text()) | {"workers_per_gpu": 2, "epochs": 3}
    config.write_text(yaml.safe_dump(raw))
    assert harness("data", "prepare", "--config", str(config)).returncode == 0
    assert harness("study", "create", "--config", str(config)).returncode == 0
    r = harness("study", "worker", "--config", str(config), "--worker", "0")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "worker group 0 (2 processes): the study has 4 finished trials" in r.stdout
    journal = tmp_path / "results" / "group" / "optuna.journal"
    study = open_study(JournalStorage(JournalFileBackend(str(journal))), "group")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4  # the budget, no overshoot
    owners = {t.user_attrs["harness.owner"]["pid"] for t in study.trials}
    assert len(owners) == 2  # both processes ran trials
