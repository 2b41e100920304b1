"""bench/stage_times.py: per-rule job times from a Snakemake log."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "stage_times.py"

LOG = """\
Building DAG of jobs...
[Mon Dec  7 23:33:55 2026]
localrule freeze_config:
    output: results/x/config.yaml
    jobid: 2
[Mon Dec  7 23:34:00 2026]
Finished jobid: 2 (Rule: freeze_config)
1 of 5 steps (20%) done
[Mon Dec  7 23:34:00 2026]
localrule arm_worker:
    jobid: 5
    wildcards: arm=hard
[Mon Dec  7 23:39:00 2026]
Finished jobid: 5 (Rule: arm_worker)
[Mon Dec  7 23:39:00 2026]
rule arm_worker:
    jobid: 7
[Mon Dec  7 23:42:03 2026]
Finished jobid: 7 (Rule: arm_worker)
[Mon Dec  7 23:42:03 2026]
localrule report:
    jobid: 9
"""


def _module():
    spec = importlib.util.spec_from_file_location("stage_times", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_jobs_are_timed_by_rule_and_an_unfinished_one_is_counted() -> None:
    seconds, unfinished = _module().job_seconds(LOG.splitlines())
    assert seconds == {"freeze_config": [5], "arm_worker": [300, 183]}
    assert unfinished == 1


def test_the_script_prints_the_csv_and_refuses_a_missing_log(tmp_path: Path) -> None:
    log = tmp_path / "run.snakemake.log"
    log.write_text(LOG)
    done = subprocess.run([sys.executable, str(SCRIPT), str(log)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.splitlines() == [
        "rule,jobs,job_seconds_total,job_seconds_each",
        "freeze_config,1,5,5",
        "arm_worker,2,483,300 183",
    ]
    assert "1 job(s) started and never finished" in done.stderr
    absent = tmp_path / "none.log"
    missing = subprocess.run(
        [sys.executable, str(SCRIPT), str(absent)], capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 2 and missing.stderr.strip() == f"stage_times: no such log: {absent}"
