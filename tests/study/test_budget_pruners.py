"""Equal compute (issue #23): a budget in images processed (offline mining's whole-set passes
counted), met without overshoot beyond one trial; Hyperband and successive halving as pruners, which
resume where an uninterrupted study ends."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from fixtures import make_cub
from helpers import ARMS, by_draw, compare_config, retried, stop_in, tiny_config
from helpers import COMPARE_NAME as NAME
from optuna.trial import TrialState

from harness.cli import main
from harness.errors import ConfigError
from harness.report.comparison import spent_text
from harness.study import parse_config
from harness.study.arms import arm_config
from harness.study.identity import images_spent, load_study


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cub(tmp_path_factory.mktemp("cub"), per_class=4, noise=60.0)


def write(tmp: Path, raw: dict) -> Path:
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def ended(study: optuna.Study) -> list[float]:
    """Each ended trial's images, in the order they ended."""
    trials = [
        t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
    ]
    trials.sort(key=lambda t: t.datetime_complete)
    return [float(t.user_attrs["images_processed"]) for t in trials]


def test_an_images_budget_is_met_without_overshoot_beyond_one_trial(data_root: Path, tmp_path: Path) -> None:
    probe = write(tmp_path, tiny_config(data_root, tmp_path / "probe", n_trials=1))
    assert main(["study", "run", "--config", str(probe)]) == 0
    one = images_spent(load_study(parse_config(yaml.safe_load(probe.read_text()))))
    assert one > 0
    budget = 2.5 * one  # about two and a half trials
    raw = tiny_config(data_root, tmp_path / "results") | {"budget": {"n_trials": None, "images": budget}}
    path = write(tmp_path, raw)
    assert main(["study", "run", "--config", str(path)]) == 0
    study = load_study(parse_config(yaml.safe_load(path.read_text())))
    images = ended(study)
    assert sum(images) >= budget  # met
    assert sum(images[:-1]) < budget  # the last trial started before it was met: no more than one past
    assert main(["study", "run", "--config", str(path)]) == 0  # met: a rerun takes no trial
    assert len(study.get_trials(deepcopy=False)) == len(images)


def test_a_comparison_with_an_images_budget_says_which_budget_held(data_root: Path, tmp_path: Path) -> None:
    """Offline mining's whole-set passes count: the offline arm runs fewer trials for the same images."""
    raw = compare_config(data_root, tmp_path / "results", n_trials=6, val_folds=1, epochs=2)
    raw["evaluate"] = {"seeds": 1, "seed": 0}
    probe = tmp_path / "probe"
    probe.mkdir()
    p = write(probe, tiny_config(data_root, probe / "results", n_trials=1))
    assert main(["study", "run", "--config", str(p)]) == 0
    budget = 2.2 * images_spent(load_study(parse_config(yaml.safe_load(p.read_text()))))
    raw["budget"] = {"n_trials": 6, "images": budget}
    path = write(tmp_path, raw)
    for argv in (["study", "run"], ["evaluate"]):
        assert main([*argv, "--config", str(path)]) == 0, argv
    arms = pd.read_csv(tmp_path / "results" / NAME / "arms.csv").set_index("arm")
    cfg = parse_config(yaml.safe_load(path.read_text()))
    for arm in ARMS:
        images = ended(load_study(arm_config(cfg, arm)))
        assert arms.loc[arm, "images_processed"] == pytest.approx(sum(images))
        assert sum(images) >= budget > sum(images[:-1])
        assert arms.loc[arm, "budget_held"] == "images"
    assert arms.loc["offline-hard", "trials"] <= arms.loc["random", "trials"]
    said = spent_text(arms.reset_index())
    assert f"images, for all {len(ARMS)} searches" in said
    low, high = arms["images_processed"].min(), arms["images_processed"].max()
    assert f"from {low:,.0f}" in said and f"to {high:,.0f}" in said and f"({high / low:.2f}x)" in said


@pytest.mark.parametrize("pruner", ["hyperband", "successive_halving"])
def test_rung_pruners_resume_where_an_uninterrupted_study_ends(
    pruner: str, data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import harness.study.objective

    def raw(results: Path) -> dict:
        r = tiny_config(data_root, results, n_trials=6) | {"epochs": 4}
        r["pruner"] = {"name": pruner, "min_resource": 1, "reduction_factor": 2}
        r["sampler"] = {"name": "tpe", "seed": 0, "n_startup_trials": 2}
        r["fault_tolerance"] = {"heartbeat_interval": 1, "grace_period": 3, "max_retry": 3}
        return r

    draws = {}
    for run in ("clean", "stopped"):
        (tmp_path / run).mkdir()
        path = write(tmp_path / run, raw(tmp_path / run / "results"))
        if run == "stopped":  # trial 2, after its first epoch (its checkpoint written)
            sigterm = stop_in(2, 1, lambda: os.kill(os.getpid(), signal.SIGTERM))
            with monkeypatch.context() as m:
                m.setattr(harness.study.objective, "train", sigterm)
                assert main(["study", "run", "--config", str(path)]) == 2
        assert main(["study", "run", "--config", str(path)]) == 0
        study = load_study(parse_config(yaml.safe_load(path.read_text())))
        kind = (
            optuna.pruners.HyperbandPruner
            if pruner == "hyperband"
            else optuna.pruners.SuccessiveHalvingPruner
        )
        assert isinstance(study.pruner, kind)
        draws[run] = (by_draw(study), bool(retried(study)))
    assert draws["stopped"][1], "the stop did not fall inside a trial"
    assert draws["stopped"][0] == draws["clean"][0]
    assert len(draws["clean"][0]) == 6


def test_budget_and_pruner_settings_are_checked(data_root: Path, tmp_path: Path) -> None:
    base = tiny_config(data_root, tmp_path)
    with pytest.raises(ConfigError, match="budget: set n_trials, timeout .* or images"):
        parse_config(base | {"budget": {"n_trials": None}})
    with pytest.raises(ConfigError, match="hyperband with min_resource 2 prunes nothing.*below 2"):
        parse_config(base | {"pruner": {"name": "hyperband", "min_resource": 2}})
    with pytest.raises(ConfigError, match="images"):
        parse_config(base | {"budget": {"images": 0}})
    assert parse_config(base | {"budget": {"n_trials": None, "images": 1e6}}).budget.images == 1e6
