"""Defects found by trying the harness as a user would (issue #16), each reproduced as a test.

9. a stale cache must not be reused after an image is replaced by one of the same size with its
   mtime set back;
10. a full disk while a cache is written through a memory map must end in one error line, not
    SIGBUS (exit 135, no message).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from fixtures import make_cub
from test_pipeline import tiny_config

from harness.cli import main

HARNESS = [sys.executable, "-m", "harness.cli", "--threads", "1"]


def _same_size_stand_in(images, target: int) -> bytes:
    """The bytes of an image of ANOTHER class, padded to the target's byte size (JPEG decoders stop
    at the end-of-image marker, so the padding is never read)."""
    size = images.absolute(target).stat().st_size
    label = images.labels[target]
    for i in range(len(images)):
        data = images.absolute(i).read_bytes()
        if images.labels[i] != label and len(data) <= size:
            return data + b"\0" * (size - len(data))
    raise AssertionError("no smaller image of another class in the fixture")


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
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState
    from test_pipeline import NAME

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
