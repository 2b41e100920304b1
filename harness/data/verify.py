"""Full check of a dataset copy: metadata, every listed file present and decodable."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.data.base import ImageList
from harness.data.images import decode
from harness.data.splits import dataset_classes, test_protocol
from harness.errors import DataError


@dataclass(frozen=True)
class VerifyReport:
    dataset: str
    root: Path
    num_images: int
    num_classes: int
    train_images: int
    test_images: int
    split: str = "official"  # how the classes were split (harness.data.splits.ClassSplit.how)
    protocol: str = "leave-one-out"
    queries: int = 0  # query-gallery: the test images scored, and those they are scored against
    gallery: int = 0

    def line(self) -> str:
        """What ``harness data verify`` prints."""
        scored = f", {self.queries} queries against {self.gallery} gallery images" if self.queries else ""
        return (
            f"{self.dataset}: {self.root}: {self.num_images} images, {self.num_classes} classes, "
            f"{self.train_images} in train classes, {self.test_images} in test classes ({self.split} split,"
            f" {self.protocol}{scored}): OK"
        )


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


def verify_dataset(
    spec: Any, root: Path, strict_counts: bool = True, test_fraction: float = 0.5, split_seed: int = 0
) -> VerifyReport:
    """``spec``: a registry dataset (``get_dataset``); ``strict_counts``: official image/class counts;
    ``test_fraction``, ``split_seed``: the class split of a dataset without one of its own. Checks
    the metadata, the split (class-disjoint, every query with a gallery image) and every image."""
    images: ImageList = spec.load(root, strict_counts=strict_counts)
    classes = dataset_classes(spec, images, test_fraction, split_seed)
    labels = images.labels
    if images.roles is not None:  # the data's own split: by row (it may share classes, class_disjoint)
        test = np.flatnonzero(np.asarray(images.roles) == "test")
    else:
        test = np.flatnonzero(np.isin(labels, classes.test))
    scored = test_protocol(images, test) if images.query is not None else {}
    verify_images(images)
    return VerifyReport(
        dataset=spec.name,
        root=Path(spec.find_root(root)),
        num_images=len(images),
        num_classes=len(images.classes),
        train_images=len(images) - len(test),
        test_images=len(test),
        split=classes.how if classes.disjoint else f"{classes.how}, classes shared",
        protocol=images.protocol,
        queries=scored.get("queries", 0),
        gallery=scored.get("gallery", 0),
    )
