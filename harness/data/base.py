"""The one record every dataset loader returns: image files and their official class ids."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import DataError

LEAVE_ONE_OUT = "leave-one-out"
QUERY_GALLERY = "query-gallery"
ROLES = ("train", "validation", "test")  # the split values a dataset may give its images
OPTIONAL = ("roles", "query", "gallery", "category")  # ImageList's optional per-image arrays


@dataclass(frozen=True)
class ImageList:
    """Images of a dataset (or of a split of it), in a fixed order.

    ``labels`` are the dataset's official 1-based class ids, so split manifests can be read
    against the dataset's own documentation (CUB 101-200 are the test classes, and so on).

    The optional per-image arrays are what some datasets define beyond a label: ``roles`` the split
    each image belongs to when the dataset gives one (``train`` / ``validation`` / ``test``: In-Shop's
    partition file, a CSV's ``split`` column), ``query`` and ``gallery`` the retrieval protocol of the
    test images (In-Shop, a CSV's ``is_query`` / ``is_gallery``; None: leave-one-out), ``category`` a
    coarse class (SOP's super-class, a CSV's ``category``).
    """

    dataset: str
    image_dir: Path
    paths: tuple[str, ...]
    labels: np.ndarray = field(repr=False)
    roles: np.ndarray | None = field(default=None, repr=False)
    query: np.ndarray | None = field(default=None, repr=False)
    gallery: np.ndarray | None = field(default=None, repr=False)
    category: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels):
            raise DataError(f"{self.dataset}: {len(self.paths)} image paths but {len(self.labels)} labels")
        for name in OPTIONAL:
            value = getattr(self, name)
            if value is not None and len(value) != len(self.paths):
                raise DataError(
                    f"{self.dataset}: {len(self.paths)} image paths but {len(value)} {name} flags"
                )
        if (self.query is None) != (self.gallery is None):
            raise DataError(f"{self.dataset}: queries are marked but no gallery, or the other way round")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def classes(self) -> np.ndarray:
        return np.unique(self.labels)

    def subset(self, class_ids: np.ndarray | list[int]) -> ImageList:
        """The images of the given classes, order kept."""
        keep = np.isin(self.labels, np.asarray(class_ids))
        idx = np.flatnonzero(keep)
        extra = {n: None if getattr(self, n) is None else getattr(self, n)[idx].copy() for n in OPTIONAL}
        return ImageList(
            dataset=self.dataset,
            image_dir=self.image_dir,
            paths=tuple(self.paths[i] for i in idx),
            labels=self.labels[idx].copy(),
            **extra,
        )

    @property
    def protocol(self) -> str:
        """How the test images are scored: ``query-gallery`` when queries and a gallery are marked,
        else ``leave-one-out`` (each image against all the others)."""
        return LEAVE_ONE_OUT if self.query is None else QUERY_GALLERY

    def fingerprint(self) -> str:
        """Hash of the file list and labels (the identity older split manifests recorded)."""
        h = hashlib.sha256()
        h.update(self.dataset.encode())
        for p, y in zip(self.paths, self.labels.tolist()):
            h.update(f"{p}\t{y}\n".encode())
        self._hash_extra(h)
        return h.hexdigest()[:16]

    def _hash_extra(self, h: Any) -> None:
        """The per-image arrays a dataset defines (none for CUB and Cars: their hashes stay as they were)."""
        for name in OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                flags = "\t".join(map(str, np.asarray(value).tolist()))
                h.update(f"{name}\t{flags}\n".encode())

    def files_fingerprint(self) -> str:
        """Hash of the file list, the labels and each file's size: which copy of a dataset this is.

        Another copy with the same files is the same dataset wherever it lies; other images under
        the same names and class ids (another resolution, another crop) are not. The split manifest
        records it, and ``evaluate`` refuses a copy the search did not run on."""
        h = hashlib.sha256()
        h.update(self.dataset.encode())
        for p, y in zip(self.paths, self.labels.tolist()):
            try:
                size = (self.image_dir / p).stat().st_size
            except OSError:
                size = -1  # decoding reports the missing file by name
            h.update(f"{p}\t{y}\t{size}\n".encode())
        self._hash_extra(h)
        return h.hexdigest()[:16]

    def absolute(self, i: int) -> Path:
        return self.image_dir / self.paths[i]


def read_table(path: Path, ncols: int, what: str, numbered: bool = False) -> list:
    """Read one of the whitespace-separated official metadata files, with clear errors.

    Rows as lists of fields, or with ``numbered`` as (line number, fields)."""
    if not path.is_file():
        raise DataError(f"missing metadata file {path}: {what}; check data_root points at the dataset")
    rows: list = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=ncols - 1)
        if len(parts) != ncols:
            raise DataError(
                f"{path}:{lineno}: expected {ncols} fields, got {len(parts)}; the file is corrupt,"
                " re-extract the dataset"
            )
        rows.append((lineno, parts) if numbered else parts)
    return rows


def parse_id(text: str, path: Path, line: int) -> int:
    """An integer id of an official metadata file; anything else is corruption, named by file:line."""
    try:
        return int(text)
    except ValueError:
        raise DataError(
            f"{path}:{line}: {text!r} is not an id; the file is corrupt, re-extract the dataset"
        ) from None
