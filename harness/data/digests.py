"""Which bytes a dataset copy holds, known cheaply on every start: the key of every cache built from it.

A cache of decoded images (and the features and activations computed from it) must never outlive a
changed image. A file's size and mtime do not show every change: a file replaced by another of the
same size, with its mtime set back (``cp -p``, ``rsync -t``, ``touch -r``, a restore from backup),
looks unchanged. Hashing every byte on every start would cost seconds on a large copy. So:

- ``results/cache/digests/`` keeps, per file, its stat signature (size, mtime, ctime, inode,
  device) and the SHA-256 of its bytes, as last seen;
- each start stats every file (0.1 s for CUB's 11,788) and reads and hashes only the files whose
  signature changed. Writing a file's bytes or setting its mtime back both change its ctime,
  which no user call can set, so a replaced image is always hashed again;
- the content key is a hash of the file list, the labels and those digests: it names the caches.
  A file touched without a change keeps the key; a copy of the same files elsewhere hashes every
  file once and then shares the caches built from the first copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from harness.data.base import ImageList
from harness.progress import Progress

log = logging.getLogger(__name__)
MISSING = "missing"  # a listed file that does not exist: decoding names it


def _signature(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return MISSING
    return h.hexdigest()


def index_path(images: ImageList, cache_dir: Path) -> Path:
    """One index per copy (its resolved folder): two copies side by side do not evict each other."""
    where = hashlib.sha256(str(images.image_dir.resolve()).encode()).hexdigest()[:12]
    return Path(cache_dir) / "digests" / f"{images.dataset}-{where}.json"


def _read_index(path: Path) -> dict[str, list]:
    try:
        data = json.loads(path.read_text())
        files = data["files"]
        return files if isinstance(files, dict) else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # none yet, or damaged: every file is hashed again, nothing worse


@dataclass(frozen=True)
class Content:
    """What a copy holds: its content key and each listed file's SHA-256 (``missing``: not there)."""

    key: str
    files: dict[str, str]
    root: str = ""  # the copy's folder (its images' parent), resolved

    def changed_since(self, before: dict[str, str]) -> list[str]:
        """The files whose bytes differ from ``before`` (a path -> digest record), or that are only
        in one of the two: replaced first, then missing, then new."""
        replaced = [p for p, d in before.items() if p in self.files and self.files[p] != d]
        gone = [p for p in before if p not in self.files]
        new = [p for p in self.files if p not in before]
        return replaced + gone + new


def content_key(images: ImageList, cache_dir: Path, threads: int | None = None) -> str:
    """A 16-hex-digit key of the copy's file list, labels and bytes (see the module doc)."""
    return content(images, cache_dir, threads).key


def content(images: ImageList, cache_dir: Path, threads: int | None = None) -> Content:
    """The copy's content key and every file's digest (see the module doc)."""
    path = index_path(images, cache_dir)
    known = _read_index(path)
    sigs = [_signature(images.absolute(i)) for i in range(len(images))]
    stale = [i for i, s in enumerate(sigs) if s is not None and known.get(images.paths[i], [None])[:-1] != s]
    digests = {p: rec[-1] for p, rec in known.items()}
    if stale:
        progress = Progress(f"hash {images.dataset} files", len(stale), "files", every=10.0)
        with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
            for i, d in zip(stale, pool.map(lambda j: _digest(images.absolute(j)), stale), strict=True):
                digests[images.paths[i]] = d
                progress.update()
    h = hashlib.sha256(images.dataset.encode())
    files: dict[str, list] = {}
    listed: dict[str, str] = {}
    for p, y, s in zip(images.paths, images.labels.tolist(), sigs, strict=True):
        d = MISSING if s is None else digests[p]
        h.update(f"{p}\t{y}\t{d}\n".encode())
        listed[p] = d
        if s is not None and d != MISSING:
            files[p] = [*s, d]
    if stale or len(files) != len(known):
        _write_index(path, images, files)
    return Content(h.hexdigest()[:16], listed, str(images.image_dir.resolve().parent))


def _write_index(path: Path, images: ImageList, files: dict[str, list]) -> None:
    """Atomic; a failure (a full or read-only disk) only costs the next start a re-hash."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"image_dir": str(images.image_dir.resolve()), "files": files}))
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not write the digest index %s (%s); the next start hashes again", path, e)
        tmp.unlink(missing_ok=True)
