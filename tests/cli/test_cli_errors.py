"""The CLI's contract for user-fixable problems: exit code 2 and ONE stderr line ``error: ...``.

Most cases run in-process (``main([...])`` + capsys: torch is imported once); a few run the real
entry point in a subprocess. ``data verify`` insists on the official image count (11788), so the
small fixtures are verified with that count lifted, and one exact-count fixture checks the
subprocess path end to end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fixtures import make_cub
from helpers import one_error_line, read_only

from harness.cli import main
from harness.data import get_dataset
from harness.registry import MINERS

FIRST_IMAGE = "images/001.Bird_Species_001/Bird_Species_001_0001.jpg"
TEST_IMAGE = "images/150.Bird_Species_150/Bird_Species_150_0002.jpg"


def run_subprocess(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def any_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let ``data verify`` accept a fixture with fewer than the official 11788 images."""
    monkeypatch.setattr(type(get_dataset("cub")), "num_images", None)


@pytest.fixture
def cub(tmp_path: Path) -> Path:
    return make_cub(tmp_path / "data", per_class=2)


# --- data verify ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exact_cub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fixture with exactly the official counts: 200 classes, 11788 images (class 200 is short)."""
    cub = make_cub(tmp_path_factory.mktemp("exact"), per_class=59, size=(16, 16))
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt"):
        path = cub / name
        path.write_text("\n".join(path.read_text().splitlines()[:11788]) + "\n")
    return cub


def test_verify_exact_count_fixture_passes(exact_cub: Path, tmp_path: Path) -> None:
    r = run_subprocess(["data", "verify", "--dataset", "cub", "--root", str(exact_cub)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert (
        "11788 images, 200 classes, 5900 in train classes, 5888 in test classes"
        " (official split, leave-one-out): OK" in r.stdout
    )


def test_verify_exact_count_fixture_corrupt_jpeg(exact_cub: Path, tmp_path: Path) -> None:
    copy = tmp_path / "CUB_200_2011"
    shutil.copytree(exact_cub, copy, copy_function=os.link)  # hard links: unlink before changing one
    bad = copy / TEST_IMAGE
    bad.unlink()
    bad.write_bytes(b"\x00not a jpeg\x00" * 64)
    r = run_subprocess(["data", "verify", "--dataset", "cub", "--root", str(copy)], tmp_path)
    msg = one_error_line(r.returncode, r.stderr)
    assert str(bad) in msg and "corrupt image" in msg
    assert (exact_cub / TEST_IMAGE).read_bytes()[:2] == b"\xff\xd8"  # the shared fixture is intact


def test_verify_small_fixture_is_rejected_by_the_official_count(cub: Path, tmp_path: Path) -> None:
    """``data verify`` loads with strict_counts=True: a 400-image fixture cannot pass.

    (``study run`` on the same folder as data_root loads with strict_counts=False and works.)
    """
    r = run_subprocess(["data", "verify", "--dataset", "cub", "--root", str(cub.parent)], tmp_path)
    msg = one_error_line(r.returncode, r.stderr)
    assert "expected 11788 images, found 400" in msg
    assert str(cub / "images.txt") in msg


def test_verify_small_fixture_passes_without_count_check(
    cub: Path, any_count: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(["data", "verify", "--dataset", "cub", "--root", str(cub)], capsys)
    assert code == 0, err
    assert err == ""
    assert (
        "400 images, 200 classes, 200 in train classes, 200 in test classes"
        " (official split, leave-one-out): OK" in out
    )


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b"GIF89a garbage " * 40, id="garbage"),
        pytest.param(lambda b: b[: len(b) // 2], id="truncated-half"),
        pytest.param(lambda b: b[:-2], id="truncated-end"),
        pytest.param(lambda b: b"", id="empty"),
    ],
)
def test_verify_corrupt_jpeg_names_the_file(
    cub: Path, any_count: None, capsys: pytest.CaptureFixture[str], damage
) -> None:
    bad = cub / TEST_IMAGE
    bad.write_bytes(damage(bad.read_bytes()))
    code, out, err = cli(["data", "verify", "--dataset", "cub", "--root", str(cub)], capsys)
    msg = one_error_line(code, err)
    assert f"corrupt image {bad} (" in msg
    assert "more bad files" not in msg
    assert out == ""


def test_verify_counts_further_bad_files(
    cub: Path, any_count: None, capsys: pytest.CaptureFixture[str]
) -> None:
    for rel in (FIRST_IMAGE, TEST_IMAGE):
        (cub / rel).write_bytes(b"junk")
    code, _, err = cli(["data", "verify", "--dataset", "cub", "--root", str(cub)], capsys)
    msg = one_error_line(code, err)
    assert str(cub / FIRST_IMAGE) in msg  # the first bad file in metadata order
    assert msg.endswith("(and 1 more bad files)")


def test_verify_missing_image_names_it(
    cub: Path, any_count: None, capsys: pytest.CaptureFixture[str]
) -> None:
    (cub / TEST_IMAGE).unlink()
    code, _, err = cli(["data", "verify", "--dataset", "cub", "--root", str(cub)], capsys)
    msg = one_error_line(code, err)
    assert "missing" in msg and str(cub / TEST_IMAGE) in msg


def test_verify_missing_labels_file_names_it(
    cub: Path, any_count: None, capsys: pytest.CaptureFixture[str]
) -> None:
    (cub / "image_class_labels.txt").unlink()
    code, _, err = cli(["data", "verify", "--dataset", "cub", "--root", str(cub)], capsys)
    msg = one_error_line(code, err)
    assert str(cub / "image_class_labels.txt") in msg


def test_verify_unlabelled_image_names_it(
    cub: Path, any_count: None, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = cub / "image_class_labels.txt"
    labels.write_text("\n".join(labels.read_text().splitlines()[:-1]) + "\n")
    code, _, err = cli(["data", "verify", "--dataset", "cub", "--root", str(cub)], capsys)
    msg = one_error_line(code, err)
    assert str(labels) in msg and "image id 400" in msg


def test_verify_malformed_metadata_names_file_and_line(
    cub: Path, any_count: None, capsys: pytest.CaptureFixture[str]
) -> None:
    images = cub / "images.txt"
    lines = images.read_text().splitlines()
    lines[4] = "5"
    images.write_text("\n".join(lines) + "\n")
    code, _, err = cli(["data", "verify", "--dataset", "cub", "--root", str(cub)], capsys)
    assert f"{images}:5:" in one_error_line(code, err)


def test_verify_nonexistent_root(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "folder"
    r = run_subprocess(["data", "verify", "--dataset", "cub", "--root", str(missing)], tmp_path)
    msg = one_error_line(r.returncode, r.stderr)
    assert str(missing) in msg and "does not exist" in msg


def test_verify_root_without_metadata(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["data", "verify", "--dataset", "cub", "--root", str(tmp_path)], capsys)
    assert "no images.txt" in one_error_line(code, err)


def test_verify_unknown_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["data", "verify", "--dataset", "imagenet", "--root", str(tmp_path)], capsys)
    msg = one_error_line(code, err)
    assert "'imagenet'" in msg and "cars" in msg and "cub" in msg


def test_verify_needs_root_or_config(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["data", "verify", "--dataset", "cub"], capsys)
    assert "--root" in one_error_line(code, err)


# --- study configs -------------------------------------------------------------------------------


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_unknown_miner_lists_known_miners(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_yaml(
        tmp_path / "study.yaml",
        {"name": "x", "dataset": "cub", "search_space": {"mining": {"choices": ["semihard", "hardest"]}}},
    )
    code, _, err = cli(["study", "run", "--config", str(cfg)], capsys)
    msg = one_error_line(code, err)
    assert "search_space.mining" in msg and "'hardest'" in msg
    known = msg.split("known miners: ")[1]
    assert known.split(", ") == list(MINERS.names())
    for name in ("all", "semihard", "hard", "batch-hard", "distance-weighted", "random", "offline-hard"):
        assert name in known.split(", ")
    assert not (tmp_path / "results").exists()  # nothing prepared before the config is checked


def test_unknown_fixed_distance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_yaml(
        tmp_path / "study.yaml", {"name": "x", "dataset": "cub", "search_space": {"distance": "manhattan"}}
    )
    code, _, err = cli(["study", "run", "--config", str(cfg)], capsys)
    msg = one_error_line(code, err)
    assert "'manhattan'" in msg and "cosine" in msg


def test_unknown_top_level_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_yaml(tmp_path / "study.yaml", {"name": "x", "dataset": "cub", "epochz": 3})
    code, _, err = cli(["study", "run", "--config", str(cfg)], capsys)
    msg = one_error_line(code, err)
    assert "unknown key 'epochz' at top level" in msg and str(cfg) in msg
    assert "epochs" in msg.split("allowed keys: ")[1]


def test_unknown_search_space_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_yaml(
        tmp_path / "study.yaml", {"name": "x", "dataset": "cub", "search_space": {"miner": "semihard"}}
    )
    code, _, err = cli(["study", "run", "--config", str(cfg)], capsys)
    assert "unknown key 'miner' at search_space" in one_error_line(code, err)


def test_invalid_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "study.yaml"
    cfg.write_text("name: x\ndataset: [cub\n")
    code, _, err = cli(["study", "run", "--config", str(cfg)], capsys)
    assert "not valid YAML" in one_error_line(code, err)


def test_missing_config_file(tmp_path: Path) -> None:
    r = run_subprocess(["study", "run", "--config", "nope.yaml"], tmp_path)
    msg = one_error_line(r.returncode, r.stderr)
    assert "nope.yaml" in msg and "does not exist" in msg
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("command", [["evaluate"], ["report"], ["study", "create"], ["data", "prepare"]])
def test_missing_config_file_every_command(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli([*command, "--config", str(tmp_path / "nope.yaml")], capsys)
    assert "does not exist" in one_error_line(code, err)


# --- help ----------------------------------------------------------------------------------------


def test_help_lists_the_commands(tmp_path: Path) -> None:
    r = run_subprocess(["--help"], tmp_path)
    assert r.returncode == 0
    for command in (
        "data",
        "study",
        "evaluate",
        "report",
        "smoke",
        "bench",
        "cluster",
        "schema",
        "embed",
        "weights",
    ):
        assert command in r.stdout
    assert "{data,study,evaluate,report,smoke,bench,cluster,schema,embed,weights}" in r.stdout


# --- storage and results-dir faults (issue #4) --------------------------------------------------------


def tiny_study(tmp_path: Path, **over) -> dict:
    root = make_cub(tmp_path / "data", per_class=2)
    return {
        "name": "faulty",
        "dataset": "cub",
        "data_root": str(root),
        "strict_counts": False,
        "results_dir": str(tmp_path / "results"),
        "backbone": "test_efficientnet",
        "pretrained": False,
        "image_size": 32,
        "epochs": 1,
        "budget": {"n_trials": 2},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "search_space": {"batch_p": 4, "batch_k": 2, "embedding_dim": 8, "mining": "semihard"},
    } | over


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql://harness:s3cret@127.0.0.1:1/optuna", "postgresql://harness:***@127.0.0.1:1/optuna"),
        ("nosuchdb://localhost/optuna", "nosuchdb://localhost/optuna"),
    ],
)
def test_unreachable_storage_url(
    url: str, shown: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_yaml(tmp_path / "study.yaml", tiny_study(tmp_path, storage=url))
    code, _, err = cli(["study", "create", "--config", str(cfg)], capsys)
    msg = one_error_line(code, err)
    assert f"cannot open Optuna storage {shown}" in msg and "s3cret" not in msg
    assert "check the URL" in msg


def _stored(tmp_path: Path) -> dict[str, bytes]:
    results = tmp_path / "results"
    return {str(p.relative_to(results)): p.read_bytes() for p in sorted(results.rglob("*")) if p.is_file()}


@pytest.fixture
def finished_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A study with its 2 trials done; returns its config path."""
    cfg = write_yaml(tmp_path / "study.yaml", tiny_study(tmp_path))
    assert main(["study", "run", "--config", str(cfg)]) == 0
    capsys.readouterr()
    return cfg


def test_changed_search_space_refused_and_nothing_lost(
    finished_study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _stored(tmp_path)
    changed = yaml.safe_load(finished_study.read_text())
    changed["search_space"]["margin"] = {"low": 0.05, "high": 0.5}
    changed["budget"]["n_trials"] = 4
    other = write_yaml(tmp_path / "changed.yaml", changed)
    for command in (["study", "create"], ["study", "worker"], ["evaluate"]):
        code, _, err = cli([*command, "--config", str(other)], capsys)
        msg = one_error_line(code, err)
        assert "'faulty' already exists" in msg and "different search space" in msg and "rename" in msg
    assert _stored(tmp_path) == before  # journal, MLflow DB, manifest, caches: byte for byte


def test_read_only_results_dir(finished_study: Path, tmp_path: Path) -> None:
    """The worker cannot write its results dir: one line naming the file, exit 2, nothing lost."""
    more = yaml.safe_load(finished_study.read_text())
    more["budget"]["n_trials"] = 4  # the same study (budget is not part of its identity), more trials
    cfg = write_yaml(tmp_path / "more.yaml", more)
    results = tmp_path / "results"
    before = _stored(tmp_path)
    modes = {p: p.stat().st_mode for p in [results, *results.rglob("*")]}
    cmd = [sys.executable, "-m", "harness.cli", "study", "worker", "--config", str(cfg)]
    try:
        r = subprocess.run(read_only(results, cmd), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    msg = one_error_line(r.returncode, r.stderr)
    assert f"cannot write to {results / 'faulty'}" in msg, msg
    assert "Permission denied" in msg or "Read-only file system" in msg, msg
    assert "writable" in msg
    assert _stored(tmp_path) == before


def test_report_unknown_study_name(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(["report", "no-such-study"], capsys)
    msg = one_error_line(code, err)
    assert "unknown study 'no-such-study'" in msg and "studies/no-such-study.yaml" in msg


def test_unreachable_mlflow_store_is_one_line_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_yaml(
        tmp_path / "study.yaml",
        tiny_study(tmp_path, mlflow_uri="postgresql://harness:s3cret@127.0.0.1:1/mlflow"),
    )
    code, _, err = cli(["study", "create", "--config", str(cfg)], capsys)
    msg = one_error_line(code, err)
    assert "MLflow tracking store postgresql://harness:***@127.0.0.1:1/mlflow" in msg, msg
    assert "s3cret" not in msg and "check the URL" in msg


# --- issue #19.5: what a user meets at a command's start ------------------------------------------


def test_an_unreachable_tracking_server_stops_study_run_before_the_data_is_prepared(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_study(tmp_path, mlflow_uri=f"http://127.0.0.1:{port}")))
    for argv in (["study", "run"], ["study", "create"], ["study", "worker"], ["evaluate"]):
        code, _, err = cli([*argv, "--config", str(path)], capsys)
        assert f"MLflow tracking server http://127.0.0.1:{port} does not answer" in one_error_line(code, err)
        assert not (tmp_path / "results").exists(), argv  # no cache, no manifest, no journal


def test_val_fraction_with_val_folds_is_refused_and_tiny_folds_are_warned(tmp_path: Path) -> None:
    from harness.errors import ConfigError
    from harness.study.config import config_warnings, parse_config

    raw = tiny_study(tmp_path)
    with pytest.raises(ConfigError, match="val_fraction 0.3 and val_folds 4 are both set"):
        parse_config(raw | {"val_folds": 4, "val_fraction": 0.3})
    parse_config(raw | {"val_folds": 1, "val_fraction": 0.3})  # a carve-out: fine
    cfg = parse_config(raw | {"val_folds": 50})
    manifest = {"folds": [[2 * i, 2 * i + 1] for i in range(50)]}  # 100 training classes, 2 per fold
    (warning,) = [w for w in config_warnings(cfg, manifest) if "val_folds" in w]
    assert "val_folds 50 leaves 2 classes in a validation fold, fewer than 10" in warning
    assert not [w for w in config_warnings(cfg, {"folds": [list(range(25))] * 4}) if "val_folds" in w]


def test_an_rdb_without_a_lock_warns_once_and_sqlite_has_a_lock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from harness.study.storage import BudgetLock

    with caplog.at_level(logging.WARNING, "harness.study.storage"):
        for _ in range(2):
            BudgetLock("mysql://u@127.0.0.1:1/optuna", "s").close()
        lock = BudgetLock(f"sqlite:///{tmp_path / 'optuna.db'}", "s")
    said = [r.getMessage() for r in caplog.records]
    once = "storage mysql: no cross-worker lock; with several workers the budget may overshoot by workers - 1"
    assert said.count(f"{once} trials") == 1
    with lock:  # a second process would wait here: the flock'd file beside the database
        assert (tmp_path / "optuna.db.s.budget.lock").is_file()
    lock.close()
