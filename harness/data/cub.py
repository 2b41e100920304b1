"""CUB-200-2011 on its official layout (images.txt, image_class_labels.txt, classes.txt)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data.base import ImageList, read_table
from harness.data.download import Archive, download_and_extract
from harness.errors import DataError


class CUB200:
    """Caltech-UCSD Birds-200-2011; retrieval protocol: classes 1-100 train, 101-200 test.

    ``train_test_split.txt`` is the per-image classification split and is deliberately unused.
    """

    name = "cub"
    num_classes = 200
    num_images: int | None = 11788
    train_classes = range(1, 101)
    test_classes = range(101, 201)
    folder = "CUB_200_2011"
    archives = (
        Archive(
            url="https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
            filename="CUB_200_2011.tgz",
            md5="97eceeb196236b17998738112f37df78",
        ),
    )

    def find_root(self, root: Path) -> Path:
        """Accept either the CUB_200_2011 folder or the folder holding it."""
        root = Path(root)
        if (root / "images.txt").is_file():
            return root
        if (root / self.folder / "images.txt").is_file():
            return root / self.folder
        if not root.exists():
            raise DataError(
                f"dataset root {root} does not exist; set data_root to the folder holding {self.folder}/"
            )
        raise DataError(
            f"no images.txt under {root} or {root / self.folder}; set data_root to the"
            f" {self.folder} folder of the official archive"
        )

    def load(self, root: Path, strict_counts: bool = True) -> ImageList:
        root = self.find_root(root)
        images = read_table(root / "images.txt", 2, "image id -> file list")
        labels = read_table(root / "image_class_labels.txt", 2, "image id -> class id")
        classes = read_table(root / "classes.txt", 2, "class id -> class name")
        by_id = {int(i): int(c) for i, c in labels}
        paths, ys = [], []
        for image_id, rel in images:
            if int(image_id) not in by_id:
                raise DataError(
                    f"{root / 'image_class_labels.txt'}: image id {image_id} ({rel}) has no label;"
                    " re-extract the dataset"
                )
            paths.append(rel)
            ys.append(by_id[int(image_id)])
        found = sorted(set(ys))
        if strict_counts and (len(classes) != self.num_classes or len(found) != self.num_classes):
            raise DataError(
                f"{root}: expected {self.num_classes} classes, classes.txt lists {len(classes)} and"
                f" images use {len(found)}; the copy is incomplete, re-extract the dataset"
            )
        if strict_counts and self.num_images is not None and len(paths) != self.num_images:
            raise DataError(
                f"{root / 'images.txt'}: expected {self.num_images} images, found {len(paths)};"
                " the copy is incomplete, re-extract the dataset"
            )
        return ImageList(self.name, root / "images", tuple(paths), np.asarray(ys, dtype=np.int64))

    def download(self, dest: Path) -> Path:
        """Fetch and unpack the official archive (checksum-verified); returns the dataset root."""
        for archive in self.archives:
            download_and_extract(archive, Path(dest))
        return self.find_root(Path(dest))
