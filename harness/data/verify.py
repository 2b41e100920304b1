"""Full check of a dataset copy: metadata, every listed file present and decodable."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data.base import ImageList
from harness.data.images import decode
from harness.errors import DataError


@dataclass(frozen=True)
class VerifyReport:
    dataset: str
    root: Path
    num_images: int
    num_classes: int
    train_images: int
    test_images: int


def verify_images(images: ImageList, threads: int | None = None) -> None:
    """Decode every image; raise one DataError naming the first bad file and the count of others."""

    def check(i: int) -> str | None:
        try:
            decode(images.absolute(i))
        except DataError as e:
            return str(e)
        return None

    with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
        problems = [p for p in pool.map(check, range(len(images))) if p]
    if problems:
        more = f" (and {len(problems) - 1} more bad files)" if len(problems) > 1 else ""
        raise DataError(problems[0] + more)


def verify_dataset(spec, root: Path, strict_counts: bool = True) -> VerifyReport:
    """``spec``: a registry dataset (CUB200, Cars196); ``strict_counts``: official image/class counts."""
    images: ImageList = spec.load(root, strict_counts=strict_counts)
    verify_images(images)
    labels = images.labels
    return VerifyReport(
        dataset=spec.name,
        root=Path(spec.find_root(root)),
        num_images=len(images),
        num_classes=len(images.classes),
        train_images=int(np.isin(labels, list(spec.train_classes)).sum()),
        test_images=int(np.isin(labels, list(spec.test_classes)).sum()),
    )
