"""The one record every dataset loader returns: image files and their official class ids."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.errors import DataError


@dataclass(frozen=True)
class ImageList:
    """Images of a dataset (or of a split of it), in a fixed order.

    ``labels`` are the dataset's official 1-based class ids, so split manifests can be read
    against the dataset's own documentation (CUB 101-200 are the test classes, and so on).
    """

    dataset: str
    image_dir: Path
    paths: tuple[str, ...]
    labels: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels):
            raise DataError(f"{self.dataset}: {len(self.paths)} image paths but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def classes(self) -> np.ndarray:
        return np.unique(self.labels)

    def subset(self, class_ids: np.ndarray | list[int]) -> ImageList:
        """The images of the given classes, order kept."""
        keep = np.isin(self.labels, np.asarray(class_ids))
        idx = np.flatnonzero(keep)
        return ImageList(
            dataset=self.dataset,
            image_dir=self.image_dir,
            paths=tuple(self.paths[i] for i in idx),
            labels=self.labels[idx].copy(),
        )

    def fingerprint(self) -> str:
        """Hash of the file list and labels (the identity older split manifests recorded)."""
        h = hashlib.sha256()
        h.update(self.dataset.encode())
        for p, y in zip(self.paths, self.labels.tolist()):
            h.update(f"{p}\t{y}\n".encode())
        return h.hexdigest()[:16]

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
