"""Search repeats (issue #23): each arm searched R times with independent sampler streams, each
search's best re-trained with the same seeds; intervals and tests over searches x seeds; a search's
stream survives a kill -9 of its worker; repeats added to a comparison keep what it ran."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fixtures import make_cub
from helpers import ARMS, REPO, RanComparison, by_draw, compare_config, retried, write
from helpers import COMPARE_NAME as NAME
from optuna.trial import TrialState

from harness.cli import main
from harness.errors import ConfigError
from harness.evaluation import repeats as R
from harness.study import parse_config
from harness.study.arms import arm_config, arm_configs
from harness.study.identity import load_study

REPEATS = 2


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cub(tmp_path_factory.mktemp("cub"), per_class=4, noise=60.0)


def repeated_config(root: Path, results: Path, **over: object) -> dict:
    raw = compare_config(root, results, n_trials=3, val_folds=1, search_repeats=REPEATS)
    raw["fault_tolerance"] = {"heartbeat_interval": 1, "grace_period": 3, "max_retry": 3}
    return raw | over


@pytest.fixture(scope="module")
def ran(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> RanComparison:
    """3 arms x 2 searches x 3 trials, 2 seeds each, run, evaluated and reported once."""
    tmp = tmp_path_factory.mktemp("repeats")
    path = write(tmp, repeated_config(data_root, tmp / "results"))
    for argv in (["study", "run"], ["evaluate"], ["report"]):
        assert main([*argv, "--config", str(path)]) == 0, argv
    return RanComparison(tmp, path)


def test_each_arm_is_searched_with_independent_streams(ran: RanComparison) -> None:
    cfg = ran.cfg
    units = [a.unit for a in arm_configs(cfg)]
    assert units == [f"{a}{s}" for a in ARMS for s in ("", "@r1")]
    seeds = {a.sampler.seed for a in arm_configs(cfg)}
    assert len(seeds) == len(units)  # no two searches share a stream
    single = parse_config(repeated_config(Path("/x"), ran.tmp / "results", search_repeats=1))
    for arm in ARMS:  # repeat 0 is the arm's study as a comparison without repeats has it
        assert arm_config(cfg, arm).sampler.seed == arm_config(single, arm).sampler.seed
        assert arm_config(cfg, arm).study_dir == ran.dir / "arms" / arm
        a, b = (load_study(arm_config(cfg, u)) for u in (arm, f"{arm}@r1"))
        assert arm_config(cfg, f"{arm}@r1").study_dir == ran.dir / "arms" / f"{arm}@r1"
        first = [tuple(sorted(t.params.items())) for t in a.trials]
        second = [tuple(sorted(t.params.items())) for t in b.trials]
        assert len(first) == len(second) == 3 and not set(first) & set(second)
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in a.trials + b.trials)


def test_a_repeat_beyond_the_config_is_refused(ran: RanComparison) -> None:
    with pytest.raises(ConfigError, match="no search repeat 2 of arm 'random'.*repeats 0-1"):
        arm_config(ran.cfg, "random@r2")
    with pytest.raises(ConfigError, match="search_repeats: 2 repeats the search of each arm of a comparison"):
        parse_config({"name": "x", "dataset": "cub", "search_repeats": 2})


def test_the_arm_table_is_the_mixed_model_over_searches_and_seeds(ran: RanComparison) -> None:
    test = pd.read_csv(ran.dir / "test.csv")
    runs = pd.read_csv(ran.dir / "test_runs.csv")
    searches = pd.read_csv(ran.dir / "searches.csv")
    assert len(searches) == len(ARMS) * REPEATS
    arms = test[test["kind"] == "arm"].set_index("config")
    values = {
        a: runs[runs["arm"] == a].pivot(index="repeat", columns="seed", values="test_recall@1").to_numpy()
        for a in ARMS
    }
    fit = R.fit(values)  # the oracle: the runs as stored, fitted here
    assert fit.repeats == REPEATS and fit.seeds == 2
    for a in ARMS:
        row = arms.loc[a]
        ci = R.arm_interval(fit, a)
        assert row["test_recall@1"] == pytest.approx(values[a].mean())
        assert (row["test_recall@1_low"], row["test_recall@1_high"]) == pytest.approx((ci.low, ci.high))
        assert row["n_repeats"] == REPEATS and row["interval"] == R.METHOD
        within = R.within_interval(fit, a)
        assert row["test_recall@1_within_low"] == pytest.approx(within.low)
        best = searches[searches["arm"] == a].sort_values(["val_recall@1", "repeat"], ascending=[False, True])
        assert row["repeat"] == best["repeat"].iloc[0]  # the config columns are its best search's
        assert row["val_recall@1_mean"] == pytest.approx(
            searches.loc[searches["arm"] == a, "val_recall@1"].mean()
        )
    assert arms["p_rank1"].sum() == pytest.approx(1.0)


def test_pairs_are_tested_with_the_search_variance_and_holm(ran: RanComparison) -> None:
    comp = pd.read_csv(ran.dir / "comparisons.csv")
    runs = pd.read_csv(ran.dir / "test_runs.csv")
    r1 = comp[(comp["metric"] == "recall@1") & (comp["family"] == "pair")]
    assert len(r1) == 3 and set(r1["method"]) == {R.METHOD}
    values = {
        a: runs[runs["arm"] == a].pivot(index="repeat", columns="seed", values="test_recall@1").to_numpy()
        for a in ARMS
    }
    fit = R.fit(values)
    for _, r in r1.iterrows():
        want = R.difference(fit, r["config"], r["versus"])
        assert (r["difference"], r["p_value"]) == pytest.approx((want.diff, want.p_value))
    from harness.evaluation.stats import holm

    assert np.allclose(r1["p_holm"], holm(list(r1["p_value"])), equal_nan=True)
    vs = comp[(comp["metric"] == "recall@1") & (comp["family"] == "vs baseline")]
    assert len(vs) == len(ARMS)
    assert set(comp["family"]) >= {"pair", "vs baseline", "online vs offline"}


def test_validation_test_agreement_is_written(ran: RanComparison) -> None:
    agreement = pd.read_csv(ran.dir / "agreement.csv").set_index("over")
    searches = pd.read_csv(ran.dir / "searches.csv")
    assert agreement.loc["searches", "n"] == len(searches)
    assert agreement.loc["arms", "n"] == len(ARMS)
    assert agreement.loc["repeat pairs within arms", "n"] <= len(ARMS)


def test_the_report_shows_both_intervals_the_searches_and_the_agreement(ran: RanComparison) -> None:
    page = (ran.dir / "report" / "index.html").read_text()
    assert "P(rank 1)" in page and "R@1 within-search" in page and "searches x seeds" in page
    assert "search-repeats" in page and "Validation and test agreement" in page
    assert re.search(r"searched 2 times with independent sampler streams", page)
    assert "it covers the search's own randomness" in page  # the arm table's caption
    assert "Run again (new searches, new seeds), the arm first on test R@1 would be" in page


KILLED_REPEAT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import harness.study.objective
from helpers import stop_in
harness.study.objective.train = stop_in(1, 1, lambda: os.kill(os.getpid(), signal.SIGKILL))
from harness.cli import main
sys.exit(main(["--threads", "1", "study", "worker", "--config", {config!r}, "--arm", "random@r1"]))
"""


def test_kill_9_of_a_repeats_worker_replays_no_draw(
    ran: RanComparison, data_root: Path, tmp_path: Path
) -> None:
    """The second search of arm random, killed mid-trial 1 and resumed by a new worker, ends with
    the draws of the uninterrupted search (the module's), and its stream is not the first search's."""
    path = write(tmp_path, repeated_config(data_root, tmp_path / "results"))
    for argv in (["data", "prepare"], ["study", "create"]):
        assert main([*argv, "--config", str(path)]) == 0, argv
    script = KILLED_REPEAT.format(tests=str(REPO / "tests"), config=str(path))
    worker = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=600
    )
    assert worker.returncode == -signal.SIGKILL, worker.stderr[-2000:]
    assert main(["study", "worker", "--config", str(path), "--arm", "random@r1"]) == 0
    cfg = parse_config(yaml.safe_load(path.read_text()), str(path))
    study = load_study(arm_config(cfg, "random@r1"))
    assert retried(study), "the kill did not fall inside a trial"
    assert by_draw(study) == by_draw(load_study(arm_config(ran.cfg, "random@r1")))
    assert not load_study(arm_config(cfg, "random")).trials  # the other searches untouched


def test_repeats_added_to_a_comparison_keep_what_it_ran(data_root: Path, tmp_path: Path) -> None:
    one = write(
        tmp_path, repeated_config(data_root, tmp_path / "results", search_repeats=1, budget={"n_trials": 2})
    )
    assert main(["study", "run", "--config", str(one)]) == 0
    cfg1 = parse_config(yaml.safe_load(one.read_text()), str(one))
    before = {a: by_draw(load_study(arm_config(cfg1, a))) for a in ARMS}
    two = write(
        tmp_path, repeated_config(data_root, tmp_path / "results", budget={"n_trials": 2}), "two.yaml"
    )
    assert main(["study", "run", "--config", str(two)]) == 0
    cfg2 = parse_config(yaml.safe_load(two.read_text()), str(two))
    for a in ARMS:
        assert by_draw(load_study(arm_config(cfg2, a))) == before[a]
        assert len(load_study(arm_config(cfg2, f"{a}@r1")).trials) == 2
    info = json.loads((tmp_path / "results" / NAME / "study.json").read_text())
    assert set(info["arms"]) == set(cfg2.arm_units)
