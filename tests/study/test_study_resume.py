"""An interrupted study ends where an uninterrupted one ends (issue #19.1, #19.2).

A TPE study of 8 trials is run once without a stop, and again stopped mid-trial (a real SIGTERM
through the worker's handler, ``kill -9`` of a worker process, a full disk) and resumed. The resumed
study must hold, for every draw index, the uninterrupted study's params *and* values (a changed value
changes every later TPE draw), and its evaluation the same ``test.csv``. The same for an arm of a
``compare`` study.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fixtures import make_cub
from helpers import REPO, by_draw, retried, stop_in, tiny_config

from harness.cli import main
from harness.study import parse_config
from harness.study.arms import arm_config
from harness.study.identity import load_study

N_TRIALS = 8
STOPPED = 2  # the trial stopped mid-way: early, so most of the study's draws come after its retry


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cub(tmp_path_factory.mktemp("cub"), per_class=4, noise=60.0)


def raw_config(root: Path, results: Path, **over: object) -> dict:
    raw = tiny_config(root, results, n_trials=N_TRIALS)
    raw |= {"epochs": 3, "evaluate": {"top_n": 2, "seed": 0, "seeds": 2}}
    raw["sampler"] = {"name": "tpe", "seed": 0, "n_startup_trials": 3}
    raw["fault_tolerance"] = {"heartbeat_interval": 1, "grace_period": 3, "max_retry": 3}
    raw["search_space"] = raw["search_space"] | {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}
    return raw | over


def write(tmp: Path, raw: dict) -> Path:
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def table_of(results: Path, name: str) -> pd.DataFrame:
    """test.csv without what names the incarnation and the storage's numbering: the study's (and
    arms') uid, the trial number (a retry takes a new one, and shifts every later trial's) and the
    exported model's folder (named by the run, under this study's results); the draw index that
    names each config, and the registered model's name and version, stay in."""
    table = pd.read_csv(results / name / "test.csv").drop(columns=["model_dir"])
    assert table.loc[table["kind"] != "baseline", "draw"].notna().all()
    if "rank" in table:  # a study: its configs are named "trial <n>"
        return table.drop(columns=["study_uid", "trial", "config"])
    return table.drop(columns=["study_uid", "trial", "arm_uid"])  # a comparison: arms by name


@pytest.fixture(scope="module")
def clean(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, pd.DataFrame]:
    """The uninterrupted study and its evaluation."""
    tmp = tmp_path_factory.mktemp("clean")
    path = write(tmp, raw_config(data_root, tmp / "results"))
    assert main(["study", "run", "--config", str(path)]) == 0
    assert main(["evaluate", "--config", str(path)]) == 0
    cfg = parse_config(yaml.safe_load(path.read_text()), str(path))
    return by_draw(load_study(cfg)), table_of(tmp / "results", cfg.name)


def assert_same_study(path: Path, clean: tuple[dict, pd.DataFrame]) -> None:
    cfg = parse_config(yaml.safe_load(path.read_text()), str(path))
    study = load_study(cfg)
    assert retried(study), "the stop did not fall inside a trial: nothing was retried"
    draws, want = by_draw(study), clean[0]
    assert sorted(draws) == list(range(N_TRIALS))
    for d in range(N_TRIALS):
        assert draws[d] == want[d], f"draw {d}: {draws[d]} != uninterrupted {want[d]}"
    assert main(["evaluate", "--config", str(path)]) == 0
    pd.testing.assert_frame_equal(table_of(Path(cfg.results_dir), cfg.name), clean[1])


def test_sigterm_mid_trial_then_the_same_command_ends_where_an_uninterrupted_study_ends(
    clean: tuple[dict, pd.DataFrame], data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import harness.study.objective

    path = write(tmp_path, raw_config(data_root, tmp_path / "results"))
    sigterm = stop_in(STOPPED, 1, lambda: os.kill(os.getpid(), signal.SIGTERM))  # the real signal
    with monkeypatch.context() as m:
        m.setattr(harness.study.objective, "train", sigterm)
        assert main(["study", "run", "--config", str(path)]) == 2
    assert main(["study", "run", "--config", str(path)]) == 0
    assert_same_study(path, clean)


def test_a_full_disk_mid_trial_then_freed_ends_where_an_uninterrupted_study_ends(
    clean: tuple[dict, pd.DataFrame], data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    path = write(tmp_path, raw_config(data_root, tmp_path / "results"))
    real_save = torch.save
    saved = {"n": 0}

    def save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        saved["n"] += 1
        if saved["n"] == STOPPED * 3 + 2:  # trial 2's second checkpoint: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        real_save(obj, f, *args, **kwargs)  # type: ignore[arg-type]

    with monkeypatch.context() as m:
        m.setattr(torch, "save", save)
        assert main(["study", "run", "--config", str(path)]) == 2
    assert main(["study", "run", "--config", str(path)]) == 0  # space freed
    assert_same_study(path, clean)


KILLED_WORKER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import harness.study.objective
from helpers import stop_in
harness.study.objective.train = stop_in({number}, 1, lambda: os.kill(os.getpid(), signal.SIGKILL))
from harness.cli import main
sys.exit(main(["--threads", "1", "study", "run", "--config", {config!r}]))
"""


def test_kill_9_of_a_worker_mid_trial_then_a_new_worker_ends_where_an_uninterrupted_study_ends(
    clean: tuple[dict, pd.DataFrame], data_root: Path, tmp_path: Path
) -> None:
    path = write(tmp_path, raw_config(data_root, tmp_path / "results"))
    script = KILLED_WORKER.format(tests=str(REPO / "tests"), number=STOPPED, config=str(path))
    worker = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=600
    )
    assert worker.returncode == -signal.SIGKILL, worker.stderr[-2000:]
    assert main(["study", "run", "--config", str(path)]) == 0  # the dead worker's trial is re-queued
    assert_same_study(path, clean)


# --- a compare arm -------------------------------------------------------------------------------------

ARMS = ["semihard", "random"]


def compare_config(root: Path, results: Path) -> dict:
    raw = raw_config(root, results, name="resumecmp", compare="mining", val_folds=2, epochs=2)
    raw["search_space"] = raw["search_space"] | {"mining": {"choices": ARMS}}
    return raw


def arm_draws(path: Path) -> dict[str, dict[int, tuple]]:
    cfg = parse_config(yaml.safe_load(path.read_text()), str(path))
    return {arm: by_draw(load_study(arm_config(cfg, arm))) for arm in ARMS}


def test_sigterm_in_a_compare_arm_then_the_same_command_ends_where_an_uninterrupted_comparison_ends(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import harness.study.objective

    results: dict[str, tuple[dict, pd.DataFrame]] = {}
    for run in ("clean", "stopped"):
        (tmp_path / run).mkdir()
        path = write(tmp_path / run, compare_config(data_root, tmp_path / run / "results"))
        if run == "stopped":  # trial 2 of the first arm, after its first epoch
            sigterm = stop_in(STOPPED, 1, lambda: os.kill(os.getpid(), signal.SIGTERM))
            with monkeypatch.context() as m:
                m.setattr(harness.study.objective, "train", sigterm)
                assert main(["study", "run", "--config", str(path)]) == 2
        assert main(["study", "run", "--config", str(path)]) == 0
        assert main(["evaluate", "--config", str(path)]) == 0
        results[run] = (arm_draws(path), table_of(tmp_path / run / "results", "resumecmp"))
    cfg = parse_config(compare_config(data_root, tmp_path / "stopped" / "results"))
    assert retried(load_study(arm_config(cfg, ARMS[0]))), "the stop did not fall inside a trial"
    assert results["stopped"][0] == results["clean"][0]
    pd.testing.assert_frame_equal(results["stopped"][1], results["clean"][1])
