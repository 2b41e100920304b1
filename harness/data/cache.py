"""Decoded-image cache: decode + resize once to a uint8 .npy, memory-mapped on every later load.

Keyed by dataset, image size and the copy's content key (``digests.content_key``: file list, labels
and the bytes of every file), so a second run of a study never decodes a JPEG, and a changed image
never reuses a stale cache.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from harness.data.base import ImageList
from harness.data.images import decode
from harness.errors import first_line
from harness.progress import Progress

log = logging.getLogger(__name__)


def _machine() -> str:
    """This host and pid namespace (containers on one host can share a hostname, not their pids)."""
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        ns = 0
    return f"{socket.gethostname()}~{ns}"


def part_path(path: Path, suffix: str = ".part") -> Path:
    """Where ``path`` is written before its atomic rename: named by this machine and process, so a
    part left by a killed writer can be told from one still being written (``sweep_parts``)."""
    return path.with_name(f"{path.name}.{_machine()}.{os.getpid()}{suffix}")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_parts(directory: Path) -> None:
    """Remove the parts this host's killed writers left in ``directory`` (SIGKILL, the OOM killer:
    no ``finally`` ran, and an activation cache's parts can be gigabytes). A part of a process that
    still runs, or of another host or pid namespace (a shared cache), is left alone."""
    tag = f".{_machine()}."
    for p in Path(directory).glob(f"*{tag}*.part*"):
        base, rest = p.name.rsplit(tag, 1)
        pid = rest.split(".", 1)[0]
        if base.endswith(".npy") and pid.isdigit() and not _running(int(pid)):
            p.unlink(missing_ok=True)
            log.info("removed %s, left by a writer that was killed", p)


def create_npy(path: Path, dtype: type | np.dtype, shape: tuple[int, ...]) -> np.memmap:
    """A new .npy file, memory-mapped for writing, with its disk blocks reserved first.

    Writing through a memory map into a file the disk has no room for kills the process with SIGBUS
    (exit 135, no message, a silent crash under a scheduler). Reserving the blocks up front turns a
    full disk into an OSError (ENOSPC) here, before any work, which ends in one line."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    try:
        with open(path, "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(f.fileno(), 0, size)
    except OSError as e:
        del arr
        path.unlink(missing_ok=True)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        need = f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"
        raise OSError(e.errno, f"{os.strerror(e.errno)} (this cache needs {need})", str(path)) from None
    return arr


def cache_path(images: ImageList, key: str, size: int, cache_dir: Path) -> Path:
    """``key``: the copy's content key (``digests.content_key``)."""
    return Path(cache_dir) / "images" / f"{images.dataset}-{size}px-{key}.npy"


def build_image_cache(
    images: ImageList, key: str, size: int, cache_dir: Path, threads: int | None = None
) -> Path:
    """Write the N x size x size x 3 uint8 array (atomically: .part then rename); return its path."""
    path = cache_path(images, key, size, cache_dir)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_parts(path.parent)
    part = part_path(path)
    arr = create_npy(part, np.uint8, (len(images), size, size, 3))
    threads = threads or min(8, os.cpu_count() or 1)
    log.info("decoding %d images of %s at %dpx into %s", len(images), images.dataset, size, path)
    progress = Progress(f"decode {images.dataset} images at {size}px", len(images), "images")
    # PIL releases the GIL while decoding, so threads scale without pickling arrays around.
    pool = ThreadPoolExecutor(threads)
    try:
        for i, img in enumerate(pool.map(lambda j: decode(images.absolute(j), size), range(len(images)))):
            arr[i] = img
            progress.update()
        arr.flush()
        del arr
        os.replace(part, path)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: stop at once, not after every image
        part.unlink(missing_ok=True)
        raise
    pool.shutdown()
    return path


def load_image_cache(images: ImageList, key: str, size: int, cache_dir: Path) -> np.ndarray:
    """The cached array, memory-mapped read-only; builds it first if missing, rebuilds it if damaged.
    ``key``: the copy's content key (``digests.content_key``)."""
    path = build_image_cache(images, key, size, cache_dir)
    arr = open_cache(path, (len(images), size, size, 3))
    if arr is None:
        arr = open_cache(build_image_cache(images, key, size, cache_dir), (len(images), size, size, 3))
        assert arr is not None, path
    return arr


def open_cache(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """Memory-map a cache file; a truncated or foreign one is set aside (None: rebuild it).

    Caches are derived data written atomically, so damage comes from outside (a copy cut short,
    a disk error); rebuilding is always safe."""
    try:
        arr = np.load(path, mmap_mode="r")
        if arr.shape == shape:
            return arr
        problem = f"shape {arr.shape}, expected {shape}"
    except (ValueError, OSError, EOFError) as e:
        problem = first_line(e, type(e).__name__)
    aside = path.with_name(path.name + ".damaged")
    os.replace(path, aside)
    log.warning("cache %s is damaged (%s); moved to %s and rebuilt", path, problem, aside)
    return None
