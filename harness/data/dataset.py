"""The base of every dataset: the retrieval protocol's class ranges, and the checks all loaders share.

A dataset is one registered subclass in its own module (``@DATASETS.register("cub")``) that says
where its files are (``find_root``) and how its metadata lists them (``read``). The base runs the
checks every copy must pass (ids and labels, the official image and class counts) and the
download of its official archives.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from harness.data.base import ImageList
from harness.data.download import Archive, download_and_extract
from harness.errors import DataError


@dataclass(frozen=True)
class Listing:
    """What a copy's metadata lists, for the count checks' messages."""

    images: ImageList
    classes_listed: int  # classes its class list names
    class_list: str  # how that list is called: "classes.txt", "class_names"
    where: Path  # the file that lists the images


class Dataset(ABC):
    name: ClassVar[str]
    num_classes: ClassVar[int | None]
    num_images: ClassVar[int | None]
    # the official classes the retrieval protocol trains and tests on; None for a dataset of the
    # user's own, whose split is given with its images or drawn (harness.data.splits.dataset_classes)
    train_classes: ClassVar[range | None]
    test_classes: ClassVar[range | None]
    archives: ClassVar[tuple[Archive, ...]] = ()  # what ``download`` fetches (md5-checked)
    # a copy to use when a study sets no data_root, relative to the working directory or the checkout
    shared_copy: ClassVar[str | None] = None
    options: ClassVar[tuple[str, ...]] = ()  # study config keys the loader is built with
    root_hint: ClassVar[str] = "the dataset folder"  # what data_root must name, for messages
    class_disjoint: bool = True  # false: the splits the data gives may share classes (csv's option)

    @abstractmethod
    def find_root(self, root: Path) -> Path:
        """The dataset folder, given it or a folder holding it; a DataError naming what is missing."""

    @abstractmethod
    def read(self, root: Path) -> Listing:
        """The images and labels the metadata under ``root`` lists (its own consistency checked)."""

    def load(self, root: Path, strict_counts: bool = True) -> ImageList:
        """``strict_counts``: the official image and class counts (false for subsets and fixtures)."""
        root = self.find_root(root)
        listing = self.read(root)
        images = listing.images
        if len(set(images.paths)) != len(images.paths):
            raise DataError(f"{listing.where}: some images are listed twice; re-extract the dataset")
        found = np.unique(images.labels)
        if (
            strict_counts
            and self.num_classes is not None
            and (listing.classes_listed != self.num_classes or len(found) != self.num_classes)
        ):
            raise DataError(
                f"{root}: expected {self.num_classes} classes, {listing.class_list} lists"
                f" {listing.classes_listed} and images use {len(found)}; the copy is incomplete,"
                " re-extract the dataset"
            )
        if strict_counts and self.num_images is not None and len(images) != self.num_images:
            raise DataError(
                f"{listing.where}: expected {self.num_images} images, found {len(images)};"
                " the copy is incomplete, re-extract the dataset"
            )
        return images

    def download(self, dest: Path) -> Path:
        """Fetch and unpack the official archives (checksum-verified); returns the dataset root."""
        if not self.archives:
            raise DataError(f"dataset {self.name} has nothing to download; set data_root to {self.root_hint}")
        for archive in self.archives:
            download_and_extract(archive, Path(dest))
        return self.find_root(Path(dest))

    @property
    def where_hint(self) -> str:
        return f"the {self.name} folder" if self.root_hint == Dataset.root_hint else self.root_hint

    def missing_root(self, root: Path, what: str) -> DataError:
        """The error for a root that holds no copy: it does not exist, or lacks ``what``."""
        if not root.exists():
            return DataError(f"dataset root {root} does not exist; set data_root to {self.where_hint}")
        return DataError(what)
