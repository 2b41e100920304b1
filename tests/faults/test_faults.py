"""Fault tests (issue #4): real worker processes on one study, killed with SIGKILL mid-trial.

Journal-file storage (one machine) and PostgreSQL (many machines) must end with every trial
accounted for exactly once, the budget met without overshoot, killed trials re-run from their
checkpoints, and MLflow holding exactly one run per trial.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import yaml
from helpers import REPO
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from processes import (
    HARNESS,
    PostgresServer,
    check_invariants,
    fault_config,
    harness,
    kill_group,
    kill_mid_trial,
    logs_text,
    open_study,
    patience,
    run_group,
    start_worker,
    wait_all,
)

from harness.study.storage import process_start

pytestmark = pytest.mark.slow
N_TRIALS = 10


def test_journal_four_workers_two_killed_then_restarted(tmp_path: Path) -> None:
    config = fault_config(tmp_path, "faults-journal", N_TRIALS)
    assert harness("data", "prepare", "--config", str(config)).returncode == 0
    created = harness("study", "create", "--config", str(config))
    assert created.returncode == 0, created.stderr
    journal = tmp_path / "results" / "faults-journal" / "optuna.journal"

    def study() -> optuna.Study:
        return open_study(JournalStorage(JournalFileBackend(str(journal))), "faults-journal")

    logs = tmp_path / "logs"
    t0 = time.perf_counter()
    workers = [start_worker(config, i, logs) for i in range(4)]
    killed = kill_mid_trial(study, workers, count=2)
    restarted = [start_worker(config, i, logs) for i in (10, 11)]  # new processes, fresh sampler seeds
    survivors = [w for w in workers if w.pid not in killed]
    codes = wait_all(survivors + restarted)
    elapsed = time.perf_counter() - t0
    text = logs_text(logs)
    assert codes == [0] * 4, text[-4000:]
    assert "database is locked" not in text
    check_invariants(
        study(),
        set(killed.values()),
        N_TRIALS,
        f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}",
        "faults-journal",
    )
    # each killed trial's directory shows how it began (a start, or a resume when the killed trial
    # was itself a retry) and no end
    for number in killed.values():
        events = [json.loads(x) for x in (journal.parent / "trials" / str(number) / "events.jsonl").open()]
        assert [e["event"] for e in events] in (["start"], ["resume"]), events
    print(f"journal: {N_TRIALS} trials, 4 workers (2 killed, 2 restarted): {elapsed:.1f} s")


def test_postgresql_four_workers_one_killed(tmp_path: Path) -> None:
    with PostgresServer() as pg:
        storage_url = pg.create_db("optuna")
        mlflow_url = pg.create_db("mlflow")  # MLflow's team setup: its backend store in PostgreSQL too
        config = fault_config(tmp_path, "faults-pg", N_TRIALS, storage=storage_url, mlflow_uri=mlflow_url)
        assert harness("data", "prepare", "--config", str(config)).returncode == 0
        created = harness("study", "create", "--config", str(config))
        assert created.returncode == 0, created.stderr

        def study() -> optuna.Study:
            return open_study(storage_url, "faults-pg")

        logs = tmp_path / "logs"
        t0 = time.perf_counter()
        workers = [start_worker(config, i, logs) for i in range(4)]
        killed = kill_mid_trial(study, workers, count=1)
        codes = wait_all([w for w in workers if w.pid not in killed])
        elapsed = time.perf_counter() - t0
        text = logs_text(logs)
        assert codes == [0] * 3, text[-4000:]
        assert "its worker stopped" in text  # found by the heartbeat's grace period, not by a restart
        check_invariants(study(), set(killed.values()), N_TRIALS, mlflow_url, "faults-pg")
    print(f"postgresql: {N_TRIALS} trials, 4 workers (1 killed): {elapsed:.1f} s")


def _events(trials_dir: Path) -> dict[int, list[str]]:
    out = {}
    for d in trials_dir.iterdir():
        out[int(d.name)] = [json.loads(x)["event"] for x in (d / "events.jsonl").open()]
    return out


def test_snakemake_killed_mid_study_resumes_with_rerun_incomplete(tmp_path: Path) -> None:
    """SIGKILL the whole snakemake process group mid-study; --rerun-incomplete finishes it without
    re-running any finished trial (counted by trainer invocations in trials/<n>/events.jsonl)."""
    import sys

    repo = REPO
    config = fault_config(tmp_path, "resume", n_trials=6, workers=2, evaluate={"top_n": 1})
    cfg = yaml.safe_load(config.read_text())
    cfg["data_root"] = "data/CUB_200_2011"
    cfg.pop("results_dir")  # the pipeline writes under results/ of its working directory
    config.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--cores", "2"]
    cmd += ["--directory", str(tmp_path), "--configfile", str(config)]
    journal = tmp_path / "results" / "resume" / "optuna.journal"
    first = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )

    def study() -> optuna.Study:
        return open_study(JournalStorage(JournalFileBackend(str(journal))), "resume")

    try:
        deadline = time.monotonic() + patience(300)
        while True:
            assert first.poll() is None, "snakemake ended before it could be killed"
            assert time.monotonic() < deadline, "the study never reached a finished + a running trial"
            if journal.exists():
                try:
                    trials = study().get_trials(deepcopy=False)
                except KeyError:  # study not created yet
                    trials = []
                done = [t for t in trials if t.state.is_finished()]
                mid = [t for t in trials if t.state == TrialState.RUNNING and t.intermediate_values]
                if done and mid:
                    break
            time.sleep(0.05)
    finally:  # on every path: snakemake and every job it started, all of them dead before we look
        kill_group(first.pid)
        first.wait(timeout=30)
    before = study().get_trials(deepcopy=False)
    finished_before = {t.number for t in before if t.state.is_finished()}
    interrupted = {t.number for t in before if t.state == TrialState.RUNNING}
    assert finished_before and interrupted and len(finished_before) < 6
    for t in before:  # every process of the run is gone: nothing left finishing trials behind our back
        owner = t.user_attrs.get("harness.owner") or {}
        if owner.get("pid"):
            assert process_start(owner["pid"]) is None or t.state.is_finished()

    unlock = run_group([*cmd, "--unlock"], cwd=tmp_path, timeout=patience(120))
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    second = run_group([*cmd, "--rerun-incomplete"], cwd=tmp_path, timeout=patience(900))
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert (tmp_path / "results" / "resume" / "report" / "index.html").is_file()

    after = study().get_trials(deepcopy=False)
    events = _events(journal.parent / "trials")
    runs_of = {n: sum(e in ("start", "resume") for e in ev) for n, ev in events.items()}
    assert all(runs_of[n] == 1 for n in finished_before), runs_of  # finished trials were not re-run
    assert all(n <= 1 for n in runs_of.values()), runs_of  # no trial's trainer ran twice
    # A trial without any invocation is one the kill caught between being claimed and its trainer's
    # start (it reported nothing yet): failed, re-queued, and run by its retry instead.
    never_ran = {t.number for t in after if not runs_of.get(t.number)}
    claimed_only = {t.number for t in before if t.state == TrialState.RUNNING and not t.intermediate_values}
    assert never_ran <= claimed_only, (never_ran, claimed_only)
    finished_after = [t for t in after if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished_after) == 6
    for number in interrupted:  # the killed trials were failed and re-run from their checkpoints
        assert after[number].state == TrialState.FAIL
        (retry,) = [t for t in after if (t.system_attrs.get("retry_history") or [None])[-1] == number]
        assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)


def test_sigterm_fails_the_trial_requeues_it_and_a_later_worker_resumes_it(tmp_path: Path) -> None:
    """SLURM's time limit / scancel: SIGTERM ends the worker with one error line; the next worker
    (the resubmitted job) resumes the interrupted trial from its checkpoint."""
    import signal

    config = fault_config(tmp_path, "sigterm", n_trials=2)
    assert harness("data", "prepare", "--config", str(config)).returncode == 0
    assert harness("study", "create", "--config", str(config)).returncode == 0
    journal = tmp_path / "results" / "sigterm" / "optuna.journal"

    def study() -> optuna.Study:
        return open_study(JournalStorage(JournalFileBackend(str(journal))), "sigterm")

    logs = tmp_path / "logs"
    (worker,) = workers = [start_worker(config, 0, logs)]
    deadline = time.monotonic() + patience(120)
    while not [t for t in study().trials if t.state == TrialState.RUNNING and t.intermediate_values]:
        assert time.monotonic() < deadline and worker.poll() is None
        time.sleep(0.05)
    worker.send_signal(signal.SIGTERM)
    assert wait_all(workers) == [2]
    last = logs_text(logs).strip().splitlines()[-1]
    assert last.startswith("error: worker 0 stopped by SIGTERM; trial 0 is re-queued"), last
    trials = study().trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert (journal.parent / "trials" / "0" / "checkpoint.pt").is_file()

    again = harness("study", "worker", "--config", str(config))
    assert again.returncode == 0, again.stderr[-3000:]
    trials = study().trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[1].user_attrs["resumed_from"]["trial"] == 0
    assert not (journal.parent / "trials" / "0" / "checkpoint.pt").exists()  # done with it: removed


FULL_DISK = r"""
set -u
R="$1"; OUT="$2"; CFG="$3"; shift 3
mount -t tmpfs -o size=48m tmpfs "$R" || exit 97
"$@" data prepare --config "$CFG" > "$OUT/prepare.log" 2>&1 || exit 98
"$@" study create --config "$CFG" > "$OUT/create.log" 2>&1 || exit 98
"$@" study worker --config "$CFG" > "$OUT/first.out" 2> "$OUT/first.err" &
pid=$!
n=0
until [ -e "$R/full/trials/0/checkpoint.pt" ]; do
  sleep 0.02; n=$((n + 1)); [ $n -gt 6000 ] && exit 96
  kill -0 $pid 2>/dev/null || exit 95
done
dd if=/dev/zero of="$R/ballast" bs=64k > /dev/null 2>&1   # the disk is full now
wait $pid; echo $? > "$OUT/first.rc"
cp "$R/full/optuna.journal" "$OUT/journal-when-full"
rm -f "$R/ballast"                                         # space freed
"$@" study worker --config "$CFG" > "$OUT/second.out" 2> "$OUT/second.err"; echo $? > "$OUT/second.rc"
cp -a "$R/." "$OUT/results/"
"""


def test_a_real_full_disk_mid_trial(tmp_path: Path) -> None:
    """A worker whose results folder (a 48 MiB tmpfs in a private mount namespace) fills up in
    mid-trial: one error line, no traceback; after space is freed the next worker resumes the
    trial from its checkpoint, every journal record parses, no MLflow run is left RUNNING."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private tmpfs mount")
    config = fault_config(tmp_path, "full", n_trials=2)
    results, out = tmp_path / "results", tmp_path / "out"
    results.mkdir()
    (out / "results").mkdir(parents=True)
    cmd = [
        "unshare",
        "-m",
        "bash",
        "-c",
        FULL_DISK,
        "full-disk",
        str(results),
        str(out),
        str(config),
        *HARNESS,
    ]
    r = run_group([*cmd, "--threads", "1"], timeout=patience(1200))
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:], [p.name for p in out.iterdir()])
    first_err = (out / "first.err").read_text()
    errors = [line for line in first_err.splitlines() if line.startswith("error: ")]
    assert (out / "first.rc").read_text().strip() == "2", first_err[-3000:]
    assert len(errors) == 1 and "Traceback" not in first_err, first_err[-3000:]
    assert "trial 0" in errors[0] and ("No space left on device" in errors[0] or "disk is full" in errors[0])
    assert (out / "second.rc").read_text().strip() == "0", (out / "second.err").read_text()[-3000:]

    journal = out / "results" / "full" / "optuna.journal"
    for line in journal.read_bytes().splitlines():
        json.loads(line)  # nothing was appended to a torn record
    study = open_study(JournalStorage(JournalFileBackend(str(journal))), "full")
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 2 and states[0] == TrialState.FAIL, states
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].user_attrs["resumed_from"]["trial"] == 0
    client = MlflowClient(f"sqlite:///{out / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("full")
    runs = client.search_runs([exp.experiment_id], "tags.`harness.phase` = 'hpo'")
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED", "FINISHED"]
