"""Two first runs at once on a fresh MLflow store (issue #11, item 2), across machines.

MLflow serialises its own schema creation with a lock file in the local /tmp, which workers on
different nodes of a cluster do not share. Each process here gets its own TMPDIR, as if on its own
node; the harness must still create the schema once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from processes import PostgresServer

pytestmark = pytest.mark.slow

WORKERS = 4
STARTER = """
import sys, time
from pathlib import Path
from harness.tracking.mlflow_tracker import Tracker
url, art, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
ready.touch()
while not go.exists():
    time.sleep(0.001)
Tracker(url, "race", art)
"""


def _first_runs_at_once(url: str, tmp_path: Path) -> list[subprocess.CompletedProcess]:
    go = tmp_path / "go"
    procs = []
    for i in range(WORKERS):
        node_tmp = tmp_path / f"node{i}" / "tmp"
        node_tmp.mkdir(parents=True)
        env = {**os.environ, "TMPDIR": str(node_tmp)}  # MLflow's db_init_lock is per node
        args = [url, str(tmp_path / "art"), str(tmp_path / f"ready{i}"), str(go)]
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        procs.append(subprocess.Popen([sys.executable, "-c", STARTER, *args], env=env, **pipes))
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(WORKERS)):
        assert time.monotonic() < deadline, "starters did not import in 120 s"
        time.sleep(0.05)
    go.touch()
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=180), *p.communicate()) for p in procs]


def test_first_runs_on_four_nodes_create_the_postgresql_mlflow_schema_once(tmp_path: Path) -> None:
    with PostgresServer() as pg:
        url = pg.create_db("mlflow")
        done = _first_runs_at_once(url, tmp_path)
        for r in done:
            assert r.returncode == 0, r.stderr[-3000:]
        client = MlflowClient(tracking_uri=url)
        assert [e.name for e in client.search_experiments() if e.name == "race"] == ["race"]
        run = client.create_run(client.get_experiment_by_name("race").experiment_id)  # schema is usable
        client.set_terminated(run.info.run_id)
