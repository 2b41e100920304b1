"""A fair comparison of mining strategies (issue #15), on the tiny fixtures: arms with equal budgets
and their own sampler streams, class-disjoint k-fold validation, evaluation of each arm's own best
config, Holm-adjusted pairwise tests, and the comparison report in a real browser."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from fixtures import make_cub
from helpers import ARMS, CHECK, RanComparison, chromium, compare_config
from optuna.trial import TrialState

from harness.cli import main
from harness.errors import ConfigError
from harness.evaluation.stats import holm
from harness.study import parse_config
from harness.study.arms import arm_config, arm_configs

HARNESS = [sys.executable, "-m", "harness.cli", "--threads", "1"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cub(tmp_path_factory.mktemp("cub"), per_class=4, noise=60.0)


def study_of(cfg) -> optuna.Study:  # noqa: ANN001 (a StudyConfig)
    from harness.study.identity import load_study

    return load_study(cfg)


def drawn(cfg) -> list[tuple]:  # noqa: ANN001
    return [tuple(sorted(t.params.items())) for t in study_of(cfg).get_trials(deepcopy=False)]


@pytest.fixture(scope="module")
def ran(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> RanComparison:
    """A 3-arm comparison, 3 trials per arm, 2 folds, run, evaluated and reported once."""
    tmp = tmp_path_factory.mktemp("compare")
    raw = compare_config(data_root, tmp / "results")
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    for argv in (["study", "run"], ["evaluate"], ["report"]):
        assert main([*argv, "--config", str(path)]) == 0, argv
    return RanComparison(tmp, path, raw)


# --- arms --------------------------------------------------------------------------------------------


def test_arms_get_equal_budgets_and_their_own_sampler_streams(ran: RanComparison) -> None:
    cfg = ran.cfg
    assert cfg.arms == ARMS
    seeds = set()
    for a in arm_configs(cfg):
        trials = study_of(a).get_trials(deepcopy=False)
        assert len(trials) == 3 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        assert {t.params.get("mining", a.search_space.fixed.get("mining")) for t in trials} == {a.arm}
        assert "mining" not in a.search_space.searched()  # the arm fixes it; the rest is the same space
        assert a.search_space.specs.keys() == cfg.search_space.specs.keys()
        seeds.add(a.sampler.seed)
        assert a.study_dir == ran.dir / "arms" / str(a.arm)
        assert a.manifest_path == cfg.manifest_path  # one split for every arm
    assert len(seeds) == len(ARMS)  # no two arms share a sampler stream
    lrs = [tuple(t.params["lr"] for t in study_of(a).trials) for a in arm_configs(cfg)]
    assert len(set(lrs)) == len(ARMS)  # ...so they draw other configs


def test_a_rerun_replays_no_draw_and_a_raised_budget_adds_new_ones(ran: RanComparison) -> None:
    cfg = ran.cfg
    before = {a.arm: drawn(a) for a in arm_configs(cfg)}
    assert main(["study", "run", "--config", str(ran.path)]) == 0  # nothing left to do
    assert {a.arm: drawn(a) for a in arm_configs(cfg)} == before
    raised = ran.raw | {"budget": {"n_trials": 4}}
    path = ran.tmp / "raised.yaml"
    path.write_text(yaml.safe_dump(raised, sort_keys=False))
    assert main(["study", "worker", "--config", str(path), "--arm", "random"]) == 0
    after = drawn(arm_config(ran.cfg, "random"))
    assert after[:3] == before["random"] and after[3] not in after[:3]


def test_each_arm_is_evaluated_with_its_own_best_config(ran: RanComparison) -> None:
    test = pd.read_csv(ran.dir / "test.csv")
    assert list(test["kind"]) == ["baseline", "arm", "arm", "arm"]
    for a in arm_configs(ran.cfg):
        complete = [t for t in study_of(a).trials if t.state == TrialState.COMPLETE]
        best = max(complete, key=lambda t: (t.value, -t.number))
        row = test[test["config"] == a.arm].iloc[0]
        assert row["trial"] == best.number and row["mining"] == a.arm
        assert row["lr"] == pytest.approx(best.params["lr"])
        assert row["n_seeds"] == 2 and row["val_recall@1"] == pytest.approx(best.value)
    runs = pd.read_csv(ran.dir / "test_runs.csv")
    assert len(runs) == 1 + 2 * len(ARMS)  # the baseline once, every arm with both seeds


def test_every_pair_is_compared_with_holm_adjusted_p(ran: RanComparison) -> None:
    comp = pd.read_csv(ran.dir / "comparisons.csv")
    r1 = comp[comp["metric"] == "recall@1"]
    pairs = r1[r1["family"] == "pair"]
    assert len(pairs) == 3 and set(map(frozenset, zip(pairs["config"], pairs["versus"]))) == {
        frozenset(p)
        for p in (("semihard", "random"), ("semihard", "offline-hard"), ("random", "offline-hard"))
    }
    np.testing.assert_allclose(pairs["p_holm"], holm(pairs["p_value"].to_numpy()))
    assert (r1[r1["family"] == "vs baseline"]["versus"] == "baseline (no triplet training)").sum() == 3
    assert len(r1[r1["family"] == "online vs offline"]) == 1
    arms = pd.read_csv(ran.dir / "arms.csv")
    assert list(arms["arm"]) == ARMS and (arms["trials"] == 3).all()
    offline = arms.set_index("arm").loc["offline-hard", "images_processed"]
    assert offline > arms.set_index("arm").loc["random", "images_processed"]  # its whole-set passes count


def test_holm_matches_a_hand_computation() -> None:
    # m = 4: sorted 0.01, 0.02, 0.03, 0.5 -> 4*0.01, max(0.04, 3*0.02), max(0.06, 2*0.03), max(., 0.5)
    p = [0.03, 0.01, 0.5, 0.02]
    np.testing.assert_allclose(holm(p), [0.06, 0.04, 0.5, 0.06])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1
    out = holm([0.01, float("nan"), 0.04])  # an undefined test is left out of the family (m = 2)
    assert out[0] == pytest.approx(0.02) and np.isnan(out[1]) and out[2] == pytest.approx(0.04)


# --- k-fold validation -------------------------------------------------------------------------------


def test_every_training_class_is_in_exactly_one_fold_and_never_trains_its_own(data_root: Path) -> None:
    from harness.data import get_dataset
    from harness.data.splits import make_split

    images = get_dataset("cub").load(data_root, strict_counts=False)
    train_classes = set(range(1, 101))
    for k in (2, 3, 4):
        split = make_split(images, range(1, 101), range(101, 201), seed=0, val_folds=k)
        folds = [set(f.tolist()) for f in split.folds]
        assert len(folds) == k and set().union(*folds) == train_classes
        assert sum(len(f) for f in folds) == len(train_classes)  # disjoint
        for f in range(k):
            tr, va = split.fold(f)
            tr_c, va_c = set(images.labels[tr].tolist()), set(images.labels[va].tolist())
            assert va_c == folds[f] and not tr_c & va_c and tr_c | va_c == train_classes
        assert split.manifest["folds"] == [sorted(f) for f in folds]
    one = make_split(images, range(1, 101), range(101, 201), seed=0)
    assert "folds" not in one.manifest and one.n_folds == 1  # 1 = the carve-out, as before


def test_a_trial_is_the_mean_over_folds(ran: RanComparison) -> None:
    a = arm_config(ran.cfg, "semihard")
    for t in study_of(a).trials:
        if t.state != TrialState.COMPLETE:
            continue
        steps = 2 * a.epochs  # fold 1's epochs are steps 1-2, fold 2's steps 3-4
        assert sorted(t.intermediate_values) == list(range(1, steps + 1))
        assert len(t.user_attrs["curve"]) == steps
        # the second fold's steps report the mean over both folds; the value is its best epoch
        assert t.value == pytest.approx(max(t.intermediate_values[s] for s in (3, 4)))


def test_fold_and_compare_errors_are_one_line() -> None:
    base = {"name": "x", "dataset": "cub"}
    with pytest.raises(ConfigError, match="compare: mining must be a hyperparameter the search space gives"):
        parse_config(base | {"compare": "mining", "search_space": {"mining": "semihard"}})
    with pytest.raises(ConfigError, match="compare: margn must be"):
        parse_config(base | {"compare": "margn"})
    with pytest.raises(ConfigError, match="val_folds 60 leaves fewer than 2"):
        parse_config(base | {"val_folds": 60})
    with pytest.raises(ConfigError, match="lower batch_p to at most 75"):
        parse_config(base | {"val_folds": 4, "search_space": {"batch_p": 80}})


def test_the_space_hash_of_older_studies_ignores_the_new_keys() -> None:
    cfg = parse_config({"name": "x", "dataset": "cub", "search_space": {"margin": {"low": 0.1, "high": 0.3}}})
    assert cfg.space_hash() == "30a2d24163823b1f"
    assert parse_config(cfg.raw | {"val_folds": 2}).space_hash() != cfg.space_hash()


# --- kill -9 in an arm -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_killed_arm_worker_resumes_and_loses_and_repeats_nothing(data_root: Path, tmp_path: Path) -> None:
    """kill -9 of one arm's worker mid-fold; the next worker of that arm fails the trial, re-queues it
    and resumes it from its checkpoint (fold and epoch); every trial runs exactly once."""
    raw = compare_config(data_root, tmp_path / "results", n_trials=3, epochs=3)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["data", "prepare", "--config", str(path)]) == 0
    assert main(["study", "create", "--config", str(path)]) == 0
    cfg = parse_config(raw)
    arm = arm_config(cfg, "random")
    worker = subprocess.Popen(
        [*HARNESS, "study", "worker", "--config", str(path), "--arm", "random"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while True:  # a trial in its second fold (step > epochs), checkpointed
            assert worker.poll() is None and time.monotonic() < deadline
            trials = study_of(arm).get_trials(deepcopy=False)
            mid = [
                t
                for t in trials
                if t.state == TrialState.RUNNING and max(t.intermediate_values, default=0) > 3
            ]
            if mid and (arm.study_dir / "trials" / str(mid[0].number) / "checkpoint.pt").is_file():
                break
            time.sleep(0.05)
        killed = mid[0].number
        os.killpg(worker.pid, signal.SIGKILL)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=60)
    assert main(["study", "worker", "--config", str(path), "--arm", "random"]) == 0
    trials = study_of(arm).get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 3 and trials[killed].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert (
        retry.user_attrs["resumed_from"]["trial"] == killed and retry.user_attrs["resumed_from"]["epoch"] >= 1
    )
    assert retry.params == trials[killed].params
    events = {
        d.name: [json.loads(x)["event"] for x in (d / "events.jsonl").open()]
        for d in (arm.study_dir / "trials").iterdir()
    }
    assert events[str(killed)] == ["start"] and events[str(retry.number)] == ["resume", "end"]
    assert all(
        ev == ["start", "end"] for n, ev in events.items() if n not in (str(killed), str(retry.number))
    )
    for other in ("semihard", "offline-hard"):  # the other arms are untouched
        assert study_of(arm_config(cfg, other)).trials == []


# --- the report in a browser ---------------------------------------------------------------------------

FIGURES = [
    "arms-r1",
    "pairwise",
    "sensitivity-margin",
    "best-so-far",
    "r1_by_mining_distance",
    "compute_curves",
]


def test_the_comparison_report_renders_in_headless_chromium(ran: RanComparison) -> None:
    report = ran.dir / "report"
    page = (report / "index.html").read_text()
    for key in FIGURES:
        assert f'id="fig-{key}"' in page, key
    assert "has the highest test R@1" in page and "Holm" in page
    probe = report / ".browser-check.html"
    probe.write_text(page.replace("</body>", CHECK + "</body>"))
    try:
        dom = chromium("--window-size=1200,3000", "--dump-dom", probe.as_uri())
    finally:
        probe.unlink()
    match = re.search(r'<pre id="harness-check">(.*?)</pre>', dom.stdout, re.S)
    assert match, dom.stderr[-2000:]
    found = json.loads(html.unescape(match.group(1)))
    assert len(found["images"]) == len(FIGURES) and all(i["ok"] for i in found["images"])
    for key, rows in found["tables"].items():
        assert rows == len(pd.read_csv(report / "tables" / f"{key}.csv")), key
    assert found["tables"]["arms-test"] == 1 + len(ARMS)  # the baseline and every arm
    assert found["tables"]["budgets"] == len(ARMS)
    assert not found["overflow"], found["overflow"]  # readable at 1200 px without sideways scrolling


def test_a_joint_report_ranks_the_arms_across_datasets(ran: RanComparison, data_root: Path) -> None:
    """Two comparisons on one page: each arm's rank per dataset and its mean rank."""
    from harness.report import build_report

    other = compare_config(data_root, ran.tmp / "results") | {"name": "tinycmp2", "seed": 1}
    path = ran.tmp / "c2.yaml"
    path.write_text(yaml.safe_dump(other, sort_keys=False))
    for argv in (["study", "run"], ["evaluate"]):
        assert main([*argv, "--config", str(path)]) == 0, argv
    out = build_report([ran.cfg, parse_config(other, str(path))])
    ranks = pd.read_csv(out.parent / "tables" / "ranks.csv")
    assert list(ranks["arm"].sort_values()) == sorted(ARMS) and "mean rank" in ranks
    assert ranks["mean rank"].is_monotonic_increasing
