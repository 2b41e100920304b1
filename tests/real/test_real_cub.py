"""``harness data verify`` on the real CUB-128 copy in ../shared/data, and on a damaged copy of it.

The damaged copy costs no disk: metadata files are copied, ``images/`` is a tree of symlinks into
the shared copy, and only the one damaged image is a real file.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SHARED

REAL = SHARED / "data" / "cub200-128" / "CUB_200_2011"
METADATA = (
    "images.txt",
    "image_class_labels.txt",
    "classes.txt",
    "train_test_split.txt",
    "bounding_boxes.txt",
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (REAL / "images.txt").is_file(), reason=f"no CUB-128 copy at {REAL}"),
]


def verify(root: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", "data", "verify", "--dataset", "cub", "--root", str(root)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def symlinked_copy(dest: Path, victim: str) -> Path:
    """``dest/CUB_200_2011``: class folders are symlinks, except the victim's, which links per file."""
    root = dest / "CUB_200_2011"
    (root / "images").mkdir(parents=True)
    for name in METADATA:
        shutil.copyfile(REAL / name, root / name)  # copyfile: the shared files are read-only
    victim_class = victim.split("/")[0]
    for folder in sorted((REAL / "images").iterdir()):
        if folder.name != victim_class:
            (root / "images" / folder.name).symlink_to(folder, target_is_directory=True)
            continue
        (root / "images" / folder.name).mkdir()
        for f in folder.iterdir():
            (root / "images" / folder.name / f.name).symlink_to(f)
    return root


def a_test_image() -> str:
    """An image of a test class (101-200), from the metadata, not a guessed file name."""
    labels = dict(line.split() for line in (REAL / "image_class_labels.txt").read_text().splitlines())
    for line in (REAL / "images.txt").read_text().splitlines():
        image_id, rel = line.split(maxsplit=1)
        if int(labels[image_id]) == 150:
            return rel
    raise AssertionError("no image of class 150")


def test_real_cub_verifies(tmp_path: Path) -> None:
    r = verify(REAL, tmp_path)
    assert r.returncode == 0, r.stderr
    assert (
        "11788 images, 200 classes, 5864 in train classes, 5924 in test classes"
        " (official split, leave-one-out): OK" in r.stdout
    )


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_damaged_copy_names_the_file(tmp_path: Path, damage: str) -> None:
    rel = a_test_image()
    root = symlinked_copy(tmp_path / "copy", rel)
    assert verify(root, tmp_path).returncode == 0  # the symlink tree itself is a valid copy
    bad = root / "images" / rel
    good = bad.resolve()
    bad.unlink()  # drop the symlink only: the shared file stays untouched
    if damage == "corrupt":
        bad.write_bytes(good.read_bytes()[:200])
    r = verify(root, tmp_path)
    lines = r.stderr.splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert str(bad) in lines[0]
    assert ("corrupt image" if damage == "corrupt" else "missing") in lines[0]
    assert "more bad files" not in lines[0]
    assert good.is_file() and good.stat().st_size > 200
