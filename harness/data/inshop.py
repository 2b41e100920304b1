"""DeepFashion In-Shop Clothes Retrieval on its official layout (Eval/list_eval_partition.txt, img/)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from harness.data.base import ImageList
from harness.data.dataset import Dataset, Listing
from harness.errors import DataError
from harness.registry import DATASETS

PARTITION = "list_eval_partition.txt"
HEADER = ("image_name", "item_id", "evaluation_status")
STATUSES = ("train", "query", "gallery")
ITEM = re.compile(r"id_(\d+)")
PAGE = "http://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html"


@DATASETS.register("inshop")
class InShop(Dataset):
    """DeepFashion In-Shop (Liu et al. 2016): 3,997 train items (25,882 images); the 3,985 test
    items' 14,218 query images are scored against their 12,612 gallery images.

    The partition file gives the split, so there are no class ranges (``train_classes`` None): item
    ids are not ordered by split. Labels are the item numbers (``id_00000001`` is 1).
    """

    name = "inshop"
    num_classes = 7982
    num_images = 52712
    train_classes = None
    test_classes = None
    shared_copy = None
    root_hint = f"the folder holding img/ and Eval/{PARTITION} (from {PAGE})"
    # Folders the benchmark is commonly unpacked into (its Drive folder's name, mmdetection's).
    folders = ("In-shop Clothes Retrieval Benchmark", "In-shop", "InShop", "inshop", "DeepFashion/In-shop")
    # No archive: img.zip and the partition file are only on a Google Drive folder that needs a
    # browser, and no public loader publishes checksums for them (see ``download``).
    archives = ()

    @staticmethod
    def partition(root: Path) -> Path | None:
        """The partition file of a dataset root: officially in Eval/, also accepted beside img/."""
        for path in (root / "Eval" / PARTITION, root / PARTITION):
            if path.is_file():
                return path
        return None

    def find_root(self, root: Path) -> Path:
        """Accept the folder holding Eval/ (or the partition file itself), or the folder above it."""
        root = Path(root)
        for candidate in (root, *(root / f for f in self.folders)):
            if self.partition(candidate) is not None:
                return candidate
        raise self.missing_root(
            root,
            f"no Eval/{PARTITION} or {PARTITION} under {root}; set data_root to the folder holding"
            f" Eval/{PARTITION} and img/ (the In-shop Clothes Retrieval Benchmark, {PAGE})",
        )

    def read(self, root: Path) -> Listing:
        """The images in file order; the partition must be item-disjoint between train and test, and
        every query item needs a gallery image, else the benchmark's recall is not defined."""
        path = self.partition(root)
        if path is None:
            raise DataError(
                f"missing metadata file {root / 'Eval' / PARTITION}; check data_root points at the dataset"
            )
        rows = _rows(path)
        paths: list[str] = []
        labels: list[int] = []
        status: list[str] = []
        first: dict[str, int] = {}  # path -> line
        train_at: dict[int, int] = {}  # item -> line of its first train image
        test_at: dict[int, tuple[int, str]] = {}  # item -> (line, status) of its first test image
        gallery: set[int] = set()
        for line, rel, item_id, what in rows:
            item = _item(item_id, path, line)
            if what not in STATUSES:
                raise DataError(
                    f"{path}:{line}: unknown evaluation status {what!r} (train, query or gallery);"
                    " the file is corrupt, re-download it"
                )
            if rel in first:
                raise DataError(
                    f"{path}:{line}: {rel} is listed twice (first on line {first[rel]}); re-download the file"
                )
            if what == "train":
                other = test_at.get(item)
            else:
                other = (train_at[item], "train") if item in train_at else None
            if other is not None:
                raise DataError(
                    f"{path}:{line}: item {item_id} is a {what} item here but a {other[1]} item on line"
                    f" {other[0]}; train and test items must not overlap, re-download the file"
                )
            first[rel] = line
            if what == "train":
                train_at.setdefault(item, line)
            else:
                test_at.setdefault(item, (line, what))
                if what == "gallery":
                    gallery.add(item)
            paths.append(rel)
            labels.append(item)
            status.append(what)
        for line, rel, item_id, what in rows:
            if what == "query" and _item(item_id, path, line) not in gallery:
                raise DataError(
                    f"{path}:{line}: query item {item_id} has no gallery image, so it cannot be scored;"
                    " the file is not the official partition, re-download it"
                )
        kind = np.asarray(status)
        listed = ImageList(
            self.name,
            self.image_dir(root),
            tuple(paths),
            np.asarray(labels, dtype=np.int64),
            roles=np.where(kind == "train", "train", "test"),
            query=kind == "query",
            gallery=kind == "gallery",
        )
        return Listing(listed, len(set(labels)), PARTITION, path)

    @staticmethod
    def image_dir(root: Path) -> Path:
        """The folder the partition's ``img/...`` paths start from: the root, or Img/ when img.zip
        was unpacked where the Drive folder keeps it (Img/img.zip)."""
        if not (root / "img").is_dir() and (root / "Img" / "img").is_dir():
            return root / "Img"
        return root

    def download(self, dest: Path) -> Path:
        """A copy already under ``dest``; else one line saying where to get it (no plain URL exists)."""
        try:
            return self.find_root(Path(dest))
        except DataError:
            pass
        raise DataError(
            f"In-Shop cannot be downloaded automatically (its Google Drive folder needs a browser): from"
            f" {PAGE} get Img/img.zip and Eval/{PARTITION}, unzip img.zip in {dest} (giving"
            f" {Path(dest) / 'img'}/) and put {PARTITION} in {Path(dest) / 'Eval'}/, then set data_root"
            f" to {dest}"
        )


def _rows(path: Path) -> list[tuple[int, str, str, str]]:
    """(line, image path, item id, status) per row; the count line and the header checked."""
    lines = [(i, t) for i, t in enumerate(path.read_text().splitlines(), start=1) if t.strip()]
    if len(lines) < 2:
        raise DataError(
            f"{path}: expected the image count, the header and the images, found"
            f" {len(lines)} line{'' if len(lines) == 1 else 's'}; the file is truncated, re-download it"
        )
    (count_line, count), (header_line, header) = lines[0], lines[1]
    if not count.strip().isdigit():
        raise DataError(
            f"{path}:{count_line}: expected the image count, got {count.strip()!r}; the file is not the"
            " official partition, re-download it"
        )
    if tuple(header.split()) != HEADER:
        raise DataError(
            f"{path}:{header_line}: expected the header '{' '.join(HEADER)}', got {header.strip()!r};"
            " the file is not the official partition, re-download it"
        )
    rows: list[tuple[int, str, str, str]] = []
    for line, text in lines[2:]:
        parts = text.split()
        if len(parts) != len(HEADER):
            raise DataError(
                f"{path}:{line}: expected {len(HEADER)} fields, got {len(parts)}; the file is corrupt,"
                " re-download it"
            )
        rows.append((line, parts[0], parts[1], parts[2]))
    if int(count) != len(rows):
        raise DataError(
            f"{path}:{count_line}: the file says {int(count)} images but lists {len(rows)}; the file is"
            " truncated or corrupt, re-download it"
        )
    return rows


def _item(text: str, path: Path, line: int) -> int:
    """``id_00000001`` -> 1."""
    match = ITEM.fullmatch(text)
    if match is None:
        raise DataError(
            f"{path}:{line}: {text!r} is not an item id (like id_00000001); the file is corrupt,"
            " re-download it"
        )
    return int(match.group(1))
