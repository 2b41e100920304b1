"""Official archives with checksums; downloading is opt-in and never used by the tests."""

from __future__ import annotations

import hashlib
import sys
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from harness.errors import DataError


@dataclass(frozen=True)
class Archive:
    url: str
    filename: str
    md5: str
    extract: bool = True


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _progress(done: int, total: int) -> None:
    if total > 0:
        pct = 100.0 * done / total
        bar = "#" * int(pct // 2.5)
        sys.stderr.write(f"\r[{bar:<40}] {pct:5.1f}% {done / 1e6:8.1f}/{total / 1e6:.1f} MB")
    else:
        sys.stderr.write(f"\r{done / 1e6:8.1f} MB")
    sys.stderr.flush()


def download(archive: Archive, dest: Path) -> Path:
    """Download to ``dest/filename`` via a .part file; verify the md5 before keeping it."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / archive.filename
    if target.is_file() and md5sum(target) == archive.md5:
        return target
    part = target.with_suffix(target.suffix + ".part")
    try:
        with urllib.request.urlopen(archive.url, timeout=60) as r, open(part, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0)
            done = 0
            while block := r.read(1 << 20):
                f.write(block)
                done += len(block)
                _progress(done, total)
        sys.stderr.write("\n")
    except OSError as e:
        raise DataError(
            f"could not download {archive.url}: {e}; download it by hand and set data_root"
        ) from e
    got = md5sum(part)
    if got != archive.md5:
        part.unlink(missing_ok=True)
        raise DataError(
            f"checksum mismatch for {archive.url}: md5 {got}, expected {archive.md5}; retry the download"
        )
    part.replace(target)
    return target


def extract_zip(path: Path, dest: Path) -> None:
    """Unpack a .zip into ``dest``, refusing it whole if any member would land outside ``dest``
    (an absolute name, ``..``): what tarfile's ``filter="data"`` does for the tars."""
    root = Path(dest).resolve()
    try:
        with zipfile.ZipFile(path) as zf:
            for member in zf.infolist():
                if not (root / member.filename).resolve().is_relative_to(root):
                    raise DataError(
                        f"{path}: member {member.filename!r} would be written outside {dest};"
                        " this is not the official archive, delete it and download again"
                    )
            zf.extractall(root)
    except zipfile.BadZipFile as e:
        raise DataError(f"{path}: not a readable .zip ({e}); delete it and download again") from e


def download_and_extract(archive: Archive, dest: Path) -> None:
    path = download(archive, dest)
    if not archive.extract:
        return
    # by the name we gave it: an uncompressed tar holding a zip can pass zipfile.is_zipfile
    if archive.filename.endswith(".zip"):
        extract_zip(path, dest)
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            tar.extractall(dest, filter="data")
