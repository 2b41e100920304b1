"""The download path (checksum, atomic rename, extraction), driven by file:// URLs: no network."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import pytest

from harness.data.download import Archive, download, download_and_extract
from harness.errors import DataError


def _archive(tmp_path: Path) -> tuple[Path, str]:
    src = tmp_path / "src" / "CUB_200_2011"
    src.mkdir(parents=True)
    (src / "images.txt").write_text("1 a/b.jpg\n")
    tgz = tmp_path / "CUB_200_2011.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(src, arcname="CUB_200_2011")
    return tgz, hashlib.md5(tgz.read_bytes()).hexdigest()


def test_download_verifies_and_extracts(tmp_path: Path) -> None:
    tgz, md5 = _archive(tmp_path)
    dest = tmp_path / "dest"
    download_and_extract(Archive(tgz.as_uri(), "CUB_200_2011.tgz", md5), dest)
    assert (dest / "CUB_200_2011" / "images.txt").read_text() == "1 a/b.jpg\n"
    assert not list(dest.glob("*.part"))


def test_checksum_mismatch_keeps_nothing(tmp_path: Path) -> None:
    tgz, _ = _archive(tmp_path)
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="checksum mismatch"):
        download(Archive(tgz.as_uri(), "CUB_200_2011.tgz", "0" * 32), dest)
    assert list(dest.iterdir()) == []


def test_unreachable_url_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="could not download .*set data_root"):
        download(Archive((tmp_path / "nope.tgz").as_uri(), "nope.tgz", "0" * 32), tmp_path / "dest")
