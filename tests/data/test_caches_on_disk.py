"""Image caches on disk: a replaced image is decoded again, a touched one keeps its caches, and a
full disk while a cache is written is one error line (not SIGBUS) that leaves nothing behind."""

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
from helpers import same_size_stand_in as _same_size_stand_in
from helpers import tiny_config

from harness.cli import main

HARNESS = [sys.executable, "-m", "harness.cli", "--threads", "1"]


FULL_CACHE = r"""
set -u
R="$1"; OUT="$2"; CFG="$3"; shift 3
mount -t tmpfs -o size=1m tmpfs "$R" || exit 97
"$@" data prepare --config "$CFG" > "$OUT/prepare.out" 2> "$OUT/prepare.err"; echo $? > "$OUT/prepare.rc"
ls -la "$R" "$R/cache" "$R/cache/images" > "$OUT/ls.txt" 2>&1
"""


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
