"""What a study refuses before it writes anything: values that would crash a trial, a changed config,
another copy of the dataset, an overwritten manifest; config errors come before heavy imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures import make_cub
from helpers import NAME, config, finished, write
from helpers import error_line as one_error_line

from harness.cli import main
from harness.errors import ConfigError


def _stored(results: Path) -> dict[str, bytes]:
    return {str(p.relative_to(results)): p.read_bytes() for p in sorted(results.rglob("*")) if p.is_file()}


def test_batch_p_above_the_training_classes_asks_for_a_smaller_batch_p() -> None:
    from harness.errors import ConfigError
    from harness.study.config import parse_config

    with pytest.raises(ConfigError) as info:
        parse_config({"name": "x", "dataset": "cub", "search_space": {"batch_p": 200}})
    assert "lower batch_p to at most 98" in str(info.value) and "val_fraction (at most" not in str(info.value)


@pytest.mark.parametrize("command", [["study", "run"], ["data", "prepare"], ["study", "create"]])
def test_a_refused_config_change_writes_nothing(
    command: list[str], data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw, path = finished(data_root, tmp_path, n_trials=2)
    before = _stored(tmp_path / "results")
    changed = write(tmp_path, raw | {"val_fraction": 0.4}, "changed.yaml")
    capsys.readouterr()
    code = main([*command, "--config", str(changed)])
    msg = one_error_line(code, capsys.readouterr().err)
    assert "val_fraction" in msg and "0.2" in msg and "0.4" in msg  # what differs, stored vs config
    assert _stored(tmp_path / "results") == before
    assert main(["evaluate", "--config", str(path)]) == 0


def test_snakemake_freeze_refuses_a_changed_config_before_writing(data_root: Path, tmp_path: Path) -> None:
    from harness.study import parse_config
    from harness.study.lifecycle import freeze

    raw, path = finished(data_root, tmp_path, n_trials=1)
    frozen = tmp_path / "results" / NAME / "config.yaml"
    freeze(parse_config(raw), frozen)
    before = frozen.read_bytes()
    with pytest.raises(ConfigError, match="val_fraction: stored 0.2, this config 0.4"):
        freeze(parse_config(raw | {"val_fraction": 0.4}), frozen)
    assert frozen.read_bytes() == before


def test_an_overwritten_manifest_is_named_with_the_command_that_fixes_it(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw, path = finished(data_root, tmp_path, n_trials=1)
    manifest = tmp_path / "results" / NAME / "split_manifest.json"
    m = json.loads(manifest.read_text())
    m["classes"]["val"], m["hash"] = m["classes"]["val"][:-1], "0123456789abcdef"
    manifest.write_text(json.dumps(m))
    capsys.readouterr()
    msg = one_error_line(main(["evaluate", "--config", str(path)]), capsys.readouterr().err)
    assert str(manifest) in msg and "0123456789abcdef" in msg and "harness data prepare --config" in msg


def test_evaluate_refuses_another_copy_of_the_dataset(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw, path = finished(data_root, tmp_path, n_trials=1)
    other = make_cub(tmp_path / "other", per_class=4, noise=60.0, seed=7)  # same ids, other images
    raw["data_root"] = str(other)
    capsys.readouterr()
    msg = one_error_line(main(["evaluate", "--config", str(write(tmp_path, raw))]), capsys.readouterr().err)
    assert "dataset" in msg and str(other) in msg and "fingerprint" in msg


@pytest.mark.parametrize(
    "space, words",
    [
        ({"lr": {"low": 0.0, "high": 1e-3, "log": True}}, ["search_space.lr", "log", "> 0"]),
        ({"margin": {"low": 0.0, "high": 0.3}}, ["search_space.margin", "> 0"]),
        ({"margin": -0.1}, ["search_space.margin", "> 0"]),
        ({"lr": {"low": 1e-4, "high": 1e-2, "log": True, "step": 1e-4}}, ["search_space.lr", "step", "log"]),
        ({"weight_decay": -1.0e-4}, ["search_space.weight_decay", ">= 0"]),
        ({"lr": 0.0}, ["search_space.lr", "> 0"]),
    ],
)
def test_values_that_would_crash_a_trial_are_rejected_at_config_time(
    space: dict, words: list[str], data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = config(data_root, tmp_path)
    raw["search_space"] = raw["search_space"] | space
    msg = one_error_line(
        main(["study", "run", "--config", str(write(tmp_path, raw))]), capsys.readouterr().err
    )
    for w in words:
        assert w in msg, msg
    assert not (tmp_path / "results").exists()


def test_config_errors_come_before_heavy_imports(tmp_path: Path) -> None:
    bad = write(tmp_path, {"name": "x", "dataset": "cub", "search_space": {"margin": -1.0}})
    code = (
        "import sys, time; t = time.perf_counter(); from harness.cli import main;"
        f" rc = main(['study', 'run', '--config', {str(bad)!r}]);"
        " print(rc, 'torch' in sys.modules, 'optuna' in sys.modules, 'mlflow' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["2", "False", "False", "False"], r.stdout + r.stderr


def test_study_run_refuses_another_copy_of_the_data_before_writing(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = config(data_root, tmp_path, n_trials=1)
    assert main(["study", "run", "--config", str(write(tmp_path, raw))]) == 0
    manifest = tmp_path / "results" / NAME / "split_manifest.json"
    before = manifest.read_bytes()
    other = make_cub(tmp_path / "other", per_class=4, noise=60.0, seed=7)
    capsys.readouterr()
    raw = raw | {"data_root": str(other), "budget": {"n_trials": 2}}
    msg = one_error_line(
        main(["study", "run", "--config", str(write(tmp_path, raw))]), capsys.readouterr().err
    )
    assert "not the one study" in msg and "left as it was" in msg
    assert manifest.read_bytes() == before
