"""CUB-200-2011 on its official layout (images.txt, image_class_labels.txt, classes.txt)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data.base import ImageList, parse_id, read_table
from harness.data.dataset import Dataset, Listing
from harness.data.download import Archive
from harness.errors import DataError
from harness.registry import DATASETS


@DATASETS.register("cub")
class CUB200(Dataset):
    """Caltech-UCSD Birds-200-2011; retrieval protocol: classes 1-100 train, 101-200 test.

    ``train_test_split.txt`` is the per-image classification split and is deliberately unused.
    """

    name = "cub"
    num_classes = 200
    num_images = 11788
    train_classes = range(1, 101)
    test_classes = range(101, 201)
    shared_copy = "../shared/data/cub200-128"
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
        raise self.missing_root(
            root,
            f"no images.txt under {root} or {root / self.folder}; set data_root to the"
            f" {self.folder} folder of the official archive",
        )

    def read(self, root: Path) -> Listing:
        """The image list with its labels; duplicate ids and labels outside classes.txt are errors
        whatever the counts (an image with an unknown class would drop out of every split)."""
        images = _ids(root / "images.txt", "image id -> file list")
        labels = _ids(root / "image_class_labels.txt", "image id -> class id")
        classes = _ids(root / "classes.txt", "class id -> class name")
        by_id = {i: parse_id(c, root / "image_class_labels.txt", line) for i, c, line in labels}
        class_ids = {i for i, _, _ in classes}
        extra = sorted(set(by_id) - {i for i, _, _ in images})
        if extra:
            raise DataError(
                f"{root / 'image_class_labels.txt'}: labels for image id {extra[0]}"
                f"{f' (and {len(extra) - 1} more)' if len(extra) > 1 else ''} missing from images.txt;"
                " the metadata files do not belong together, re-extract the dataset"
            )
        paths: list[str] = []
        ys: list[int] = []
        seen: dict[str, int] = {}
        for image_id, rel, line in images:
            if image_id not in by_id:
                raise DataError(
                    f"{root / 'image_class_labels.txt'}: image id {image_id} ({rel}) has no label;"
                    " re-extract the dataset"
                )
            if by_id[image_id] not in class_ids:
                raise DataError(
                    f"{root / 'image_class_labels.txt'}: image id {image_id} ({rel}) has class"
                    f" {by_id[image_id]}, which classes.txt does not list; re-extract the dataset"
                )
            if rel in seen:
                raise DataError(
                    f"{root / 'images.txt'}:{line}: {rel} is listed twice (also as image id {seen[rel]});"
                    " re-extract the dataset"
                )
            seen[rel] = image_id
            paths.append(rel)
            ys.append(by_id[image_id])
        listed = ImageList(self.name, root / "images", tuple(paths), np.asarray(ys, dtype=np.int64))
        return Listing(listed, len(classes), "classes.txt", root / "images.txt")


def _ids(path: Path, what: str) -> list[tuple[int, str, int]]:
    """(id, value, line) per row of an official ``<id> <value>`` file; a repeated id is an error."""
    out: list[tuple[int, str, int]] = []
    first: dict[int, int] = {}
    for line, (key, value) in read_table(path, 2, what, numbered=True):
        i = parse_id(key, path, line)
        if i in first:
            raise DataError(
                f"{path}:{line}: id {i} is listed twice (first on line {first[i]}); the file is corrupt,"
                " re-extract the dataset"
            )
        first[i] = line
        out.append((i, value, line))
    return out
