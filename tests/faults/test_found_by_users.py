"""Defects found by trying the harness as a user would (issue #16), each reproduced as a test.

9. a stale cache must not be reused after an image is replaced by one of the same size with its
   mtime set back;
10. a full disk while a cache is written through a memory map must end in one error line, not
    SIGBUS (exit 135, no message).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fixtures import make_cub
from helpers import REPO, tiny_config
from helpers import same_size_stand_in as _same_size_stand_in
from processes import patience

from harness.cli import main

HARNESS = [sys.executable, "-m", "harness.cli", "--threads", "1"]


def test_a_replaced_image_with_size_and_mtime_kept_is_decoded_again(tmp_path: Path) -> None:
    from harness.data.images import decode
    from harness.study.config import parse_config
    from harness.study.data import prepare

    root = make_cub(tmp_path / "data", per_class=4, noise=60.0)
    cfg = parse_config(tiny_config(root, tmp_path / "results"))
    first = prepare(cfg)
    before_pixels = np.array(first.images_u8[0])
    before_features = np.array(first.inputs[0])
    path = first.images.absolute(0)
    st = path.stat()
    path.write_bytes(_same_size_stand_in(first.images, 0))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # the mtime set back, as cp -p / rsync -t do
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns

    again = prepare(cfg)
    assert np.array_equal(again.images_u8[0], decode(path, cfg.cache_px))  # the new pixels...
    assert not np.array_equal(again.images_u8[0], before_pixels)
    assert not np.array_equal(again.inputs[0], before_features)  # ...and features of them
    assert np.array_equal(again.images_u8[1:], first.images_u8[1:])


def test_a_touched_image_keeps_its_caches(tmp_path: Path) -> None:
    """Only other bytes make a new cache: a file whose mtime changed but whose bytes did not is hashed
    again, found equal, and the caches stay."""
    from harness.study.config import parse_config
    from harness.study.data import prepare

    root = make_cub(tmp_path / "data", per_class=4, noise=60.0)
    cfg = parse_config(tiny_config(root, tmp_path / "results"))
    prepare(cfg)
    caches = sorted(p.name for p in (tmp_path / "results" / "cache").rglob("*.npy"))
    os.utime(root / "images.txt")  # metadata touched too
    path = next((root / "images").rglob("*.jpg"))
    os.utime(path, ns=(1, 10**18))
    prepare(cfg)
    assert sorted(p.name for p in (tmp_path / "results" / "cache").rglob("*.npy")) == caches


def test_a_full_disk_while_a_cache_is_reserved_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The image cache's blocks are reserved before the memory map is written: a full disk ends in
    ENOSPC and one error line, and no partial file is left behind."""
    root = make_cub(tmp_path / "data", per_class=2)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_config(root, tmp_path / "results")))

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    assert main(["data", "prepare", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: cannot access "), err
    assert "No space left on device (this cache needs" in errors[0] and "Traceback" not in err, err
    assert not list((tmp_path / "results" / "cache" / "images").glob("*.part*"))


def test_a_full_disk_while_activations_are_reserved_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.data.cache import create_npy

    calls: list[int] = []

    def full(fd: int, offset: int, length: int) -> None:
        calls.append(length)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    target = tmp_path / "acts.npy.part"
    with pytest.raises(OSError) as info:
        create_npy(target, np.float16, (1000, 64, 4, 4))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert calls and calls[0] >= 1000 * 64 * 16 * 2
    assert not target.exists()


FULL_CACHE = r"""
set -u
R="$1"; OUT="$2"; CFG="$3"; shift 3
mount -t tmpfs -o size=1m tmpfs "$R" || exit 97
"$@" data prepare --config "$CFG" > "$OUT/prepare.out" 2> "$OUT/prepare.err"; echo $? > "$OUT/prepare.rc"
ls -la "$R" "$R/cache" "$R/cache/images" > "$OUT/ls.txt" 2>&1
"""


@pytest.mark.slow
def test_a_real_full_disk_while_decoding_is_one_line_not_sigbus(tmp_path: Path) -> None:
    """A 1 MiB tmpfs results folder: the decoded-image cache (2.4 MiB) does not fit. Before the
    blocks were reserved, writing through the memory map killed the process with SIGBUS (135)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private tmpfs mount")
    root = make_cub(tmp_path / "data", per_class=4)
    results, out = tmp_path / "results", tmp_path / "out"
    results.mkdir()
    out.mkdir()
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_config(root, results)))
    cmd = ["unshare", "-m", "bash", "-c", FULL_CACHE, "full", str(results), str(out), str(path), *HARNESS]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, start_new_session=True)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    err = (out / "prepare.err").read_text()
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert (out / "prepare.rc").read_text().strip() == "2", err[-3000:]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert "No space left on device" in errors[0], errors
    assert ".part" not in (out / "ls.txt").read_text()


# --- 20. an interrupted study draws what an uninterrupted one draws ---------------------------------


def _finished_params(results: Path) -> list[tuple]:
    from helpers import NAME
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    storage = JournalStorage(JournalFileBackend(str(results / NAME / "optuna.journal")))
    import optuna

    study = optuna.load_study(study_name=NAME, storage=storage)
    done = (TrialState.COMPLETE, TrialState.PRUNED)
    return [tuple(sorted(t.params.items())) for t in study.get_trials(deepcopy=False, states=done)]


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_an_interrupted_study_proposes_the_configs_of_one_that_never_stopped(
    sampler: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM in trial 2, then the same command again: the retry of trial 2 takes trial number 3,
    and every later fresh trial still gets the draw an uninterrupted study gives it."""
    import harness.study.objective

    root = make_cub(tmp_path / "data", per_class=4, noise=60.0)

    def raw(results: Path) -> dict:
        r = tiny_config(root, results, n_trials=6)
        r["epochs"] = 2
        r["sampler"] = {"name": sampler, "seed": 0, "n_startup_trials": 3}
        r["search_space"] = r["search_space"] | {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}
        return r

    clean = tmp_path / "clean.yaml"
    clean.write_text(yaml.safe_dump(raw(tmp_path / "clean")))
    assert main(["study", "run", "--config", str(clean)]) == 0

    real = harness.study.objective.train
    hit: list[int] = []

    def interrupted(*args: object, **kw: object) -> object:
        on_epoch = kw["on_epoch"]

        def stop_after_first(epoch: int, stats: dict) -> None:
            on_epoch(epoch, stats)  # type: ignore[operator]
            trial = on_epoch.__self__.trial  # type: ignore[union-attr]
            if trial.number == 2 and not hit:
                hit.append(trial.number)
                raise KeyboardInterrupt("signal 15")  # what the SIGTERM handler raises

        return real(*args, **(kw | {"on_epoch": stop_after_first}))

    cut = tmp_path / "cut.yaml"
    cut.write_text(yaml.safe_dump(raw(tmp_path / "cut")))
    monkeypatch.setattr(harness.study.objective, "train", interrupted)
    assert main(["study", "run", "--config", str(cut)]) == 2 and hit == [2]
    assert main(["study", "run", "--config", str(cut)]) == 0
    assert _finished_params(tmp_path / "cut") == _finished_params(tmp_path / "clean")


# --- 6. a rule script ends in one line, like the CLI ---------------------------------------------------


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


# --- 11. concurrent first runs on a fresh PostgreSQL Optuna storage ---------------------------------

STARTER = """
import sys, time
from pathlib import Path
from harness.study.storage import open_storage
url, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.001)
open_storage(url)
"""


@pytest.mark.slow
def test_three_first_runs_on_a_fresh_postgresql_storage_all_open_it(tmp_path: Path) -> None:
    """Optuna creates its tables on first use; three processes at once crashed 2 of 3 with
    UniqueViolation. The harness creates them under an advisory lock."""
    from processes import PostgresServer

    with PostgresServer() as pg:
        url = pg.create_db("optuna")
        go = tmp_path / "go"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", STARTER, url, str(tmp_path / f"ready{i}"), str(go)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            for i in range(3)
        ]
        try:
            while not all((tmp_path / f"ready{i}").exists() for i in range(3)):
                assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
                time.sleep(0.05)
            go.touch()
            done = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, 9)
        assert [code for code, _ in done] == [0, 0, 0], [err[-2000:] for _, err in done]


# --- small things a long study showed ----------------------------------------------------------------


def _study(root: Path, tmp: Path, **over: object) -> Path:
    raw = tiny_config(root, tmp / "results", n_trials=2) | {"epochs": 1} | over
    path = tmp / "s.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def cub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cub(tmp_path_factory.mktemp("cub"), per_class=4, noise=60.0)


def test_12_an_mlflow_run_left_running_by_a_full_disk_is_ended_by_the_next_worker(
    cub: Path, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    path = _study(cub, tmp_path)
    assert main(["study", "run", "--config", str(path)]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], "tags.`harness.phase` = 'hpo'")
    stuck = runs[0].info.run_id
    client.update_run(stuck, status="RUNNING")  # what a worker that could not write its end leaves
    raised = yaml.safe_load(path.read_text()) | {"budget": {"n_trials": 3}}
    path.write_text(yaml.safe_dump(raised))
    assert main(["study", "worker", "--config", str(path)]) == 0
    assert client.get_run(stuck).info.status == "FINISHED"


def test_12_a_librarys_traceback_is_one_line_in_the_log(capsys: pytest.CaptureFixture[str]) -> None:
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


def test_13_delete_is_refused_while_a_worker_of_the_study_is_alive(cub: Path, tmp_path: Path) -> None:
    from harness.study.config import load_config
    from harness.study.lifecycle import create, delete_study
    from harness.study.presence import live_workers, registered
    from harness.study.storage import owner_record

    path = _study(cub, tmp_path)
    assert main(["data", "prepare", "--config", str(path)]) == 0
    cfg = load_config(path)
    create(cfg)
    with registered(cfg):  # a worker still loading its data: no trial running yet
        with pytest.raises(Exception, match="a worker is running .* stop it first"):
            delete_study(cfg, force=True)
    dead = cfg.study_dir / "running" / "elsewhere-1.json"
    dead.write_text(json.dumps(owner_record(-1) | {"pid": 2**22 + 7}))  # this machine, a pid that is gone
    assert live_workers(cfg) == [] and not dead.exists()
    assert delete_study(cfg, force=True).is_dir()


def test_13_a_worker_whose_study_was_set_aside_under_it_says_so(
    cub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race a registration cannot close: the study is set aside between the worker's start and its
    first use of the journal (here: while it loads its data)."""
    import harness.study.worker
    from harness.errors import HarnessError
    from harness.study.config import load_config
    from harness.study.worker import run_worker

    path = _study(cub, tmp_path)
    assert main(["data", "prepare", "--config", str(path)]) == 0
    assert main(["study", "create", "--config", str(path)]) == 0
    cfg = load_config(path)
    real = harness.study.worker.prepare

    def deleted_meanwhile(*args: object, **kw: object) -> object:
        (cfg.study_dir / "optuna.journal").rename(tmp_path / "moved.journal")  # as a delete would
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(harness.study.worker, "prepare", deleted_meanwhile)
    with pytest.raises(HarnessError, match="was set aside .* nothing was lost"):
        run_worker(cfg)


def test_14_two_evaluations_at_once_run_each_unit_once(cub: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    path = _study(cub, tmp_path, evaluate={"top_n": 1, "seeds": 2, "references": False})
    assert main(["study", "run", "--config", str(path)]) == 0
    procs = [
        subprocess.Popen([*HARNESS, "evaluate", "--config", str(path)], stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    codes = [p.wait(timeout=600) for p in procs]
    assert codes == [0, 0], [p.stderr.read()[-2000:] for p in procs if p.stderr]
    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    names = [
        r.info.run_name for r in client.search_runs([exp.experiment_id], "tags.`harness.phase` = 'test'")
    ]
    assert len(names) == len(set(names)) == 3  # the baseline and the best config with 2 seeds, once each


WRITE_OFTEN = """
import sys
from pathlib import Path
import pandas as pd
from harness.study.final import write_csv
df = pd.DataFrame({"x": range(2000)})
for _ in range(200):
    write_csv(df, Path(sys.argv[1]))
"""


def test_14_two_evaluations_writing_one_table_at_once_both_succeed(tmp_path: Path) -> None:
    """Found by the test above failing once in three: both evaluations wrote test.csv through the
    same temp name, and the one whose temp the other had renamed away died with "cannot access
    .../test.tmp". Two processes now write one table 200 times each, at the same moment."""
    out = tmp_path / "test.csv"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITE_OFTEN, str(out)], stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        errors = [p.communicate(timeout=patience(300))[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [e[-1500:] for e in errors]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert len(pd.read_csv(out)) == 2000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.csv"]  # no temp file left behind


HOT_JOURNAL = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("PRAGMA cache_size=1")  # dirty pages spill into the file: its journal is on disk
con.execute("BEGIN IMMEDIATE")
con.execute("UPDATE runs SET status = 'KILLED'")
print("mid-transaction", flush=True)
time.sleep(600)
"""


def test_a_tracker_killed_mid_transaction_leaves_a_database_the_next_run_opens(tmp_path: Path) -> None:
    """Found by CI: snakemake killed mid-study with a worker inside an MLflow write leaves
    mlflow.db-journal (a hot journal). The schema check opened the database read-only, which cannot
    roll a hot journal back, so every rerun failed with "attempt to write a readonly database" and
    told the user to move the whole MLflow database aside."""
    import sqlite3

    from harness.tracking.mlflow_tracker import check_schema

    db = tmp_path / "mlflow.db"
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("CREATE TABLE runs (run_uuid TEXT PRIMARY KEY, status TEXT)")
        con.executemany("INSERT INTO runs VALUES (?, 'FINISHED')", [(f"{i:032x}",) for i in range(3000)])
        con.commit()
    cmd = [sys.executable, "-c", HOT_JOURNAL, str(db)]
    writer = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "mid-transaction"
    finally:
        writer.kill()
        writer.wait()
    assert (tmp_path / "mlflow.db-journal").stat().st_size > 0  # hot: its writer died holding it

    check_schema(db)  # raised HarnessError("cannot read the MLflow database ...") before
    with contextlib.closing(sqlite3.connect(db)) as con:  # rolled back: every run as committed
        counts = con.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall()
    assert counts == [("FINISHED", 3000)]
    assert sorted(p.name for p in tmp_path.iterdir() if "half-migrated" in p.name) == []


def test_15_a_file_tracking_uri_is_refused_at_config_time() -> None:
    from harness.errors import ConfigError
    from harness.study.config import parse_config

    with pytest.raises(ConfigError, match="mlflow_uri: 'file:///tmp/mlruns' is not a tracking store"):
        parse_config({"name": "x", "dataset": "cub", "mlflow_uri": "file:///tmp/mlruns"})


def test_15_an_unreachable_tracking_server_fails_in_seconds(cub: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = _study(cub, tmp_path, mlflow_uri=f"http://127.0.0.1:{port}")
    t0 = time.perf_counter()
    r = subprocess.run([*HARNESS, "study", "create", "--config", str(path)], capture_output=True, text=True)
    took = time.perf_counter() - t0
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert r.returncode == 2 and len(errors) == 1 and "does not answer" in errors[0], r.stderr[-2000:]
    assert took < 120  # was 255 s of client retries (generous: the check itself takes one connect)


def test_16_a_sqlite_storage_in_a_folder_that_does_not_exist_yet_is_created(
    cub: Path, tmp_path: Path
) -> None:
    db = tmp_path / "new" / "deeper" / "optuna.db"
    path = _study(cub, tmp_path, storage=f"sqlite:///{db}")
    assert main(["study", "run", "--config", str(path)]) == 0
    assert db.is_file()


def test_18_batch_p_above_the_training_classes_asks_for_a_smaller_batch_p() -> None:
    from harness.errors import ConfigError
    from harness.study.config import parse_config

    with pytest.raises(ConfigError) as info:
        parse_config({"name": "x", "dataset": "cub", "search_space": {"batch_p": 200}})
    assert "lower batch_p to at most 98" in str(info.value) and "val_fraction (at most" not in str(info.value)


def test_19_a_deleted_mlflow_db_is_named_when_evaluate_creates_it_again(cub: Path, tmp_path: Path) -> None:
    path = _study(cub, tmp_path, evaluate={"top_n": 1, "seeds": 1, "references": False})
    assert main(["study", "run", "--config", str(path)]) == 0
    (tmp_path / "results" / "mlflow.db").unlink()
    r = subprocess.run([*HARNESS, "evaluate", "--config", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "held no run of study tiny, which has 2 finished trials" in r.stderr


def test_21_23_the_console_counts_trials_and_says_what_evaluate_reused(
    cub: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _study(cub, tmp_path, evaluate={"top_n": 1, "seeds": 1, "references": False})
    assert main(["study", "run", "--config", str(path)]) == 0
    assert main(["evaluate", "--config", str(path)]) == 0
    assert main(["evaluate", "--config", str(path)]) == 0
    err = capsys.readouterr().err
    assert "tiny: trial 1 starts (2 of 2 taken, 1 finished); study ETA" in err
    assert "evaluate tiny: 2 of 2 runs already done, reused" in err


def test_22_progress_of_runs_of_minutes_is_time_per_run() -> None:
    from harness.progress import Progress

    p = Progress("evaluate x", 4, "runs")
    p.start -= 150  # one run took two and a half minutes
    p.done = 1
    assert "2.5 min per run" in p.line() and "runs/s" not in p.line()


def test_25_equal_compute_breaks_ties_by_the_fewest_images() -> None:
    import pandas as pd

    from harness.report.tables import equal_compute_table

    curves = pd.DataFrame(
        {
            "number": [0, 0, 1, 1],
            "mining": ["semihard"] * 4,
            "family": ["online"] * 4,
            "images_processed": [38199.0, 50000.0, 25592.0, 30000.0],
            "val_recall@1": [0.7, 0.6, 0.7, 0.65],
        }
    )
    table, _ = equal_compute_table(curves)
    assert table["images to best overall"].tolist() == [25592.0]


def test_26_results_dir_under_snakemake_says_where_it_applies(tmp_path: Path) -> None:
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
