"""Helpers for the fault tests: real worker processes, killed for real, and the study invariants."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import yaml
from fixtures import make_cub
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness.study.optuna_api import trial_id

HARNESS = [str(Path(sys.executable).parent / "harness")]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def fault_config(tmp: Path, name: str, n_trials: int = 10, **over) -> Path:
    """A study slow enough to be killed mid-trial on 2 cores: a fine-tuned tiny trunk, 6 epochs."""
    root = tmp / "data" / "CUB_200_2011"
    if not root.exists():
        make_cub(tmp / "data", per_class=4)
    cfg = {
        "name": name,
        "dataset": "cub",
        "data_root": str(root),
        "strict_counts": False,
        "results_dir": str(tmp / "results"),
        "backbone": "test_efficientnet",
        "pretrained": False,
        "trunk": "finetune",
        "compile": False,
        "image_size": 32,
        "epochs": 6,
        "budget": {"n_trials": n_trials},
        "fault_tolerance": {"heartbeat_interval": 1, "grace_period": 4, "max_retry": 3},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "search_space": {
            "margin": {"low": 0.1, "high": 0.3},
            "mining": {"choices": ["semihard", "batch-hard", "offline-hard"]},
            "distance": {"choices": ["cosine", "euclidean"]},
            "batch_p": 4,
            "batch_k": 4,
            "embedding_dim": 16,
        },
    } | over
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def patience(seconds: float) -> float:
    """A wait's limit, stretched on a busy machine: what a test waits for runs slower when other work
    shares its CPUs (the 1-minute load over the CPUs, at least 1), and HARNESS_TEST_PATIENCE
    stretches every limit for a slow machine. Nothing asserts on it: it only bounds a wait."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = max(1.0, os.getloadavg()[0] / cpus)
    return seconds * busy * float(os.environ.get("HARNESS_TEST_PATIENCE", "1"))


def run_group(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    """``subprocess.run`` in a session of its own, whose whole process group is killed when it times
    out or the test fails meanwhile, and after it ends: snakemake's jobs (and a worker group's
    processes) die with it, instead of running on re-parented to init. Past ``timeout`` it fails
    with what a hang leaves to read (``hang_report``) instead of a bare ``TimeoutExpired``."""
    kw = {"capture_output": True, "text": True} | kw
    proc = subprocess.Popen(cmd, start_new_session=True, **_popen_kw(kw))
    hung = ""
    try:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            hung = hang_report(proc.pid)
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait()
    if hung:
        logs = _log_tails(Path(kw.get("cwd") or "."))
        raise AssertionError(
            f"{' '.join(cmd[:6])} ... ran past {timeout:.0f} s\n{hung}\n--- stderr (tail)\n"
            f"{(err or '')[-6000:]}\n--- stdout (tail)\n{(out or '')[-2000:]}\n{logs}"
        )
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def hang_report(pgid: int) -> str:
    """What each live member of a process group is doing: its command line, state and kernel wait
    channel; each one that handles SIGUSR1 (every harness process: ``harness.pipeline``) is sent it
    and writes its threads' Python stacks into its log or stderr, read after the group is killed."""
    lines = ["--- process group members (pid state wchan: command)"]
    for pid in group_members(pgid):
        proc = Path(f"/proc/{pid}")
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            wchan = (proc / "wchan").read_text() if (proc / "wchan").exists() else "?"
            caught = int(
                next(
                    x for x in (proc / "status").read_text().splitlines() if x.startswith("SigCgt:")
                ).split()[1],
                16,
            )
        except (OSError, StopIteration, ValueError):
            continue
        lines.append(f"{pid} {state} {wchan or '-'}: {command[:300]}")
        if caught >> (signal.SIGUSR1 - 1) & 1:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)
    time.sleep(3)  # the stacks are written by each process's own C handler: at once, but not now
    return "\n".join(lines)


def _log_tails(root: Path, chars: int = 3000) -> str:
    """The tail of every rule log (``logs/``) and result log under ``root``."""
    parts = []
    for path in sorted([*root.glob("logs/**/*.log"), *root.glob("results/**/*.log")]):
        with contextlib.suppress(OSError):
            parts.append(f"--- {path.relative_to(root)} (tail)\n{path.read_text(errors='replace')[-chars:]}")
    return "\n".join(parts)


def kill_group(pgid: int, timeout: float = 60) -> None:
    """SIGKILL a process group and wait until none of its members is alive: the signal is delivered
    asynchronously, and a member busy in the kernel (disk I/O on a loaded machine) dies a little
    later than the leader is reaped. Zombies count as gone: a container's init may never reap them."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + patience(timeout)
    while (alive := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive, f"process group {pgid} still has live members {alive} after SIGKILL"


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes whose process group is ``pgid``, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):  # fields 3 (state) and 5 (pgrp)
            found.append(int(entry.name))
    return found


def _popen_kw(kw: dict) -> dict:
    out = dict(kw)
    if out.pop("capture_output", False):
        out |= {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    return out


def harness(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return run_group([*HARNESS, "--threads", "1", *args], timeout=patience(timeout), **kw)


def start_worker(config: Path, index: int, logs: Path) -> subprocess.Popen:
    logs.mkdir(parents=True, exist_ok=True)
    out = (logs / f"worker-{index}-{time.monotonic_ns()}.log").open("w")
    return subprocess.Popen(
        [*HARNESS, "--threads", "1", "study", "worker", "--config", str(config), "--worker", str(index)],
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its group is ended with it (tests/conftest.py ends what is left)
    )


def open_study(storage: optuna.storages.BaseStorage | str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def kill_mid_trial(
    study_of, workers: list[subprocess.Popen], count: int, timeout: float = 240
) -> dict[int, int]:
    """SIGKILL ``count`` distinct workers while each runs a trial that has finished >= 1 epoch.

    ``study_of()`` returns a fresh read of the study. Returns {pid: trial number}.
    """
    pids = {w.pid for w in workers}
    killed: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while len(killed) < count:
        assert time.monotonic() < deadline, "no worker reached the middle of a trial in time"
        assert all(w.poll() is None for w in workers if w.pid not in killed), "a worker exited early"
        for t in study_of().get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = t.user_attrs.get("harness.owner") or {}
            pid = owner.get("pid")
            mine = owner.get("trial_id") == trial_id(t)
            if mine and pid in pids and pid not in killed and len(t.intermediate_values) >= 1:
                os.kill(pid, signal.SIGKILL)
                killed[pid] = t.number
                if len(killed) == count:
                    break
        time.sleep(0.05)
    for w in workers:
        if w.pid in killed:
            w.wait(timeout=30)
    return killed


def wait_all(workers: list[subprocess.Popen], timeout: float = 400) -> list[int]:
    deadline = time.monotonic() + patience(timeout)
    codes = []
    for w in workers:
        codes.append(w.wait(timeout=max(1.0, deadline - time.monotonic())))
    return codes


def check_invariants(
    study: optuna.Study, killed: set[int], n_trials: int, mlflow_uri: str, name: str
) -> None:
    """Every trial exactly once; killed trials FAIL with one resumed retry; budget met; MLflow in step."""
    trials = study.get_trials(deepcopy=False)
    assert [t.number for t in trials] == list(range(len(trials)))
    states = Counter(t.state for t in trials)
    assert states[TrialState.RUNNING] == 0 and states[TrialState.WAITING] == 0, states
    assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == n_trials, states  # met, no overshoot
    retries: dict[int, list[optuna.trial.FrozenTrial]] = {}
    for t in trials:
        history = t.system_attrs.get("retry_history")
        if history:
            retries.setdefault(history[-1], []).append(t)
    failed = {t.number for t in trials if t.state == TrialState.FAIL}
    assert killed <= failed, (killed, failed)
    assert failed == set(retries), (failed, retries)  # a FAIL here only ever comes from a dead worker
    for number, (retry,) in ((n, tuple(r)) for n, r in retries.items()):
        assert retry.state in FINISHED or retry.number in failed
        assert retry.params == trials[number].params
        if number in killed:  # killed after >= 1 epoch: the retry resumed, it did not start over
            # (from the killed trial, or, when that was itself a retry killed before its first own
            # checkpoint, from the newest ancestor that has one)
            assert retry.user_attrs["resumed_from"]["trial"] in retry.system_attrs["retry_history"]
            assert retry.user_attrs["resumed_from"]["epoch"] >= 1
    # MLflow: one run per Optuna trial, retries linked to the run they continue, nothing left RUNNING
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name(name)
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("harness.phase") == "hpo"]
    by_number = Counter(int(r.data.tags["harness.trial"]) for r in runs)
    assert by_number == Counter(t.number for t in trials), by_number
    run_of = {int(r.data.tags["harness.trial"]): r for r in runs}
    for t in trials:
        run = run_of[t.number]
        assert run.info.status != "RUNNING", (t.number, run.info.status)
        assert run.data.tags.get("optuna.state") == t.state.name
    for number, (retry,) in ((n, tuple(r)) for n, r in retries.items()):
        tags = run_of[retry.number].data.tags
        assert tags["harness.retry_of"] == str(number)
        assert tags["harness.retry_of_run"] == run_of[number].info.run_id


def logs_text(logs: Path) -> str:
    return "".join(p.read_text() for p in sorted(logs.glob("*.log")))


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 in a temp dir (Debian's postgresql package).

    Run as the ``postgres`` user when the tests run as root (initdb refuses root). Missing server
    binaries skip the test, unless HARNESS_REQUIRE_POSTGRES=1 (set by .ci/run) makes that a failure.
    """

    def __init__(self) -> None:
        bindirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
        found = [d for d in bindirs if (d / "initdb").is_file()]
        self.bin = found[0] if found else None
        self.dir: Path | None = None
        self.port = 0

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)

    def __enter__(self) -> PostgresServer:
        import shutil
        import socket
        import tempfile

        if self.bin is None:
            msg = "PostgreSQL server binaries not found (apt-get install postgresql)"
            if os.environ.get("HARNESS_REQUIRE_POSTGRES") == "1":
                pytest_fail(msg)
            import pytest

            pytest.skip(msg)
        self.dir = Path(tempfile.mkdtemp(prefix="harness-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        data = self.dir / "data"
        r = self._run(str(self.bin / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
        assert r.returncode == 0, r.stderr
        opts = f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c max_connections=200"
        r = self._run(
            str(self.bin / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(self.dir / "log"), "-w", "start"
        )
        assert r.returncode == 0, r.stderr + r.stdout
        return self

    def url(self, db: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def create_db(self, name: str) -> str:
        import psycopg2

        conn = psycopg2.connect(self.url("postgres"))
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url(name)

    def __exit__(self, *exc: object) -> None:
        import shutil

        if self.dir is not None:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop")
            shutil.rmtree(self.dir, ignore_errors=True)


def pytest_fail(msg: str) -> None:
    import pytest

    pytest.fail(msg)
