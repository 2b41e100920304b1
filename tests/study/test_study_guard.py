"""What a stored study refuses before any work (harness.study.guard): data whose bytes changed under
it (issue #19.4)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml
from fixtures import make_cub
from helpers import error_line as one_error_line
from helpers import same_size_stand_in as _same_size_stand_in
from helpers import tiny_config

from harness.cli import main
from harness.data import get_dataset
from harness.study import parse_config


def study_files(study_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(study_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(study_dir.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


@pytest.fixture
def searched(tmp_path: Path) -> tuple[Path, Path]:
    """A study of 2 finished trials on a tiny CUB copy; returns its config and data root."""
    root = make_cub(tmp_path / "data", per_class=4, noise=60.0)
    raw = tiny_config(root, tmp_path / "results", n_trials=2)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["study", "run", "--config", str(path)]) == 0
    return path, root


def replace_keeping_size_and_mtime(root: Path, index: int) -> str:
    """Another class's image under an image's name, same size, its mtime set back (cp -p, rsync -t)."""
    images = get_dataset("cub").load(root, strict_counts=False)
    path = images.absolute(index)
    st = path.stat()
    path.write_bytes(_same_size_stand_in(images, index))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return images.paths[index]


def test_a_study_whose_image_was_replaced_is_refused_by_every_command_naming_the_file(
    searched: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path, root = searched
    cfg = parse_config(yaml.safe_load(path.read_text()), str(path))
    changed = replace_keeping_size_and_mtime(root, 5)
    raised = yaml.safe_load(path.read_text()) | {"budget": {"n_trials": 4}}  # more trials on the same study
    path.write_text(yaml.safe_dump(raised))
    before = study_files(cfg.study_dir)
    for argv in (["study", "run"], ["study", "worker"], ["data", "prepare"], ["evaluate"]):
        msg = one_error_line(main([*argv, "--config", str(path)]), capsys.readouterr().err)
        want = f"the data of study '{cfg.name}' changed since its search ({changed} has other bytes)"
        assert want in msg, (argv, msg)
        assert "restore the copy the search used" in msg and "rename the study" in msg and "--force" in msg
        assert study_files(cfg.study_dir) == before, argv
    assert main(["study", "delete", "--config", str(path), "--force"]) == 0  # a way on: a new study
    assert main(["study", "run", "--config", str(path)]) == 0


def test_several_changed_files_are_counted_and_a_restored_copy_is_accepted(
    searched: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path, root = searched
    images = get_dataset("cub").load(root, strict_counts=False)
    originals = {images.absolute(i): images.absolute(i).read_bytes() for i in range(3)}
    stats = {p: p.stat() for p in originals}
    first = replace_keeping_size_and_mtime(root, 0)
    for i in (1, 2):
        replace_keeping_size_and_mtime(root, i)
    path.write_text(yaml.safe_dump(yaml.safe_load(path.read_text()) | {"budget": {"n_trials": 3}}))
    msg = one_error_line(main(["study", "worker", "--config", str(path)]), capsys.readouterr().err)
    assert f"({first} has other bytes (and 2 more files))" in msg, msg
    for p, data in originals.items():  # the copy the search used, back
        p.write_bytes(data)
        os.utime(p, ns=(stats[p].st_atime_ns, stats[p].st_mtime_ns))
    assert main(["study", "worker", "--config", str(path)]) == 0
