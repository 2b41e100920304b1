"""The Snakemake rule scripts: a SIGTERM is one log line, and results_dir under Snakemake says where
it applies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO, tiny_config


def test_a_rule_script_stopped_by_sigterm_logs_one_line_and_no_traceback(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from harness.pipeline import run_rule
    from harness.study.signals import Interrupted

    log = tmp_path / "logs" / "study_worker" / "s" / "0.log"
    log.parent.mkdir(parents=True)
    smk = SimpleNamespace(log=[str(log)], threads=1)

    def stopped() -> None:
        raise Interrupted("worker 0 stopped by SIGTERM; trial 3 is re-queued and resumes from its checkpoint")

    saved = sys.stderr, sys.stdout
    try:
        with pytest.raises(SystemExit) as info:
            run_rule(smk, stopped)
    finally:
        sys.stderr, sys.stdout = saved
    assert info.value.code == 2
    text = log.read_text()
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if "error: worker 0 stopped by SIGTERM" in line]
    assert len(errors) == 1


def test_results_dir_under_snakemake_says_where_it_applies(tmp_path: Path) -> None:
    repo = REPO
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tmp_path / "data", tmp_path / "elsewhere")))
    r = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "-n", "--configfile", str(cfg)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode != 0 and "--directory" in r.stdout + r.stderr
