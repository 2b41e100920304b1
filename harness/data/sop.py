"""Stanford Online Products on its official layout (Ebay_train.txt, Ebay_test.txt, <category>_final/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data.base import ImageList, parse_id, read_table
from harness.data.dataset import Dataset, Listing
from harness.data.download import Archive
from harness.errors import DataError
from harness.registry import DATASETS

HEADER = ("image_id", "class_id", "super_class_id", "path")
LISTS = ("Ebay_train.txt", "Ebay_test.txt")
# super_class_id 1..12 in this order, each the <name>_final/ folder of its images
CATEGORIES = (
    "bicycle",
    "cabinet",
    "chair",
    "coffee_maker",
    "fan",
    "kettle",
    "lamp",
    "mug",
    "sofa",
    "stapler",
    "table",
    "toaster",
)


@DATASETS.register("sop")
class StanfordOnlineProducts(Dataset):
    """Stanford Online Products (Song et al. 2016); retrieval protocol: classes 1-11318 train
    (Ebay_train.txt, 59,551 images), 11319-22634 test (Ebay_test.txt, 60,502), leave-one-out.

    The two list files are the split; a class in the other file's range is an error rather than
    a class moved, since it would train on a test product. Labels are the products (class_id);
    ``category`` is the super-class (1 bicycle ... 12 toaster, the <name>_final/ folders).
    """

    name = "sop"
    num_classes = 22634
    num_images = 120053
    train_classes = range(1, 11319)
    test_classes = range(11319, 22635)
    shared_copy = None
    folder = "Stanford_Online_Products"
    # Folders the dataset is commonly unpacked into besides the archive's own.
    folders = (folder, "sop", "SOP", "online_products")
    # The official archive (https://cvgl.stanford.edu/projects/lifted_struct/). md5 as published by
    # KevinMusgrave/powerful-benchmarker (src/powerful_benchmarker/datasets/stanford_online_products.py)
    # for ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip; the same file over HTTP, the
    # URL chainer/chainercv uses (chainercv/datasets/online_products/online_products_dataset.py),
    # since FTP fails behind most proxies (chainer/chainercv#643). A mirror of the same zip on Google
    # Drive (id 1TclrpQOF_ullUP99wk_gjGN8pKvtErG8) is what pytorch-metric-learning downloads
    # (src/pytorch_metric_learning/datasets/sop.py), without a checksum.
    archives = (
        Archive(
            url="http://ftp.cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip",
            filename="Stanford_Online_Products.zip",
            md5="7f73d41a2f44250d4779881525aea32e",
        ),
    )

    def find_root(self, root: Path) -> Path:
        """Accept the Stanford_Online_Products folder or the folder holding it."""
        root = Path(root)
        for candidate in (root, *(root / f for f in self.folders)):
            if (candidate / LISTS[0]).is_file():
                return candidate
        raise self.missing_root(
            root,
            f"no {LISTS[0]} under {root} or {root / self.folder}; set data_root to the {self.folder}"
            " folder of the official archive",
        )

    def read(self, root: Path) -> Listing:
        """Both lists in order, train then test. Image ids are checked within each file, which holds
        whether the test file numbers its images anew or on from the train file; a path listed twice
        is an error across the two as well, since one image cannot be in both splits."""
        paths: list[str] = []
        labels: list[int] = []
        category: list[int] = []
        seen: dict[str, str] = {}  # path -> file:line of its first listing
        for filename, own, other, theirs in (
            (LISTS[0], self.train_classes, "test", self.test_classes),
            (LISTS[1], self.test_classes, "train", self.train_classes),
        ):
            assert own is not None and theirs is not None
            path = root / filename
            ids: dict[int, int] = {}
            for line, image_id, class_id, super_id, rel in _rows(path):
                if image_id in ids:
                    raise DataError(
                        f"{path}:{line}: image id {image_id} is listed twice (first on line {ids[image_id]});"
                        " the file is corrupt, re-extract the dataset"
                    )
                if rel in seen:
                    raise DataError(
                        f"{path}:{line}: {rel} is listed twice (first at {seen[rel]}); re-extract the dataset"
                    )
                if class_id not in own:
                    what = (
                        f"a {other} class (the official {other} classes are {_span(theirs)})"
                        if class_id in theirs
                        else f"outside the official classes 1-{self.num_classes}"
                    )
                    raise DataError(
                        f"{path}:{line}: class {class_id} is {what}, but {filename} lists it; the lists"
                        " are not the official ones, re-extract the dataset"
                    )
                if not 1 <= super_id <= len(CATEGORIES):
                    raise DataError(
                        f"{path}:{line}: super_class_id {super_id} outside 1..{len(CATEGORIES)};"
                        " the file is corrupt, re-extract the dataset"
                    )
                ids[image_id] = line
                seen[rel] = f"{filename}:{line}"
                paths.append(rel)
                labels.append(class_id)
                category.append(super_id)
        ys = np.asarray(labels, dtype=np.int64)
        listed = ImageList(self.name, root, tuple(paths), ys, category=np.asarray(category, dtype=np.int64))
        return Listing(listed, len(np.unique(ys)), " + ".join(LISTS), root / LISTS[0])


def _span(r: range) -> str:
    return f"{r.start}-{r.stop - 1}"


def _rows(path: Path) -> list[tuple[int, int, int, int, str]]:
    """(line, image id, class id, super-class id, path) per row of an Ebay list, header checked."""
    if path.is_file():  # else read_table names the missing file
        lines = path.read_text().splitlines()
        line, first = next(((i, t) for i, t in enumerate(lines, start=1) if t.strip()), (1, ""))
        if tuple(first.split()) != HEADER:
            got = repr(first) if first else "an empty file"
            raise DataError(
                f"{path}:{line}: expected the header '{' '.join(HEADER)}', got {got}; the file is not"
                " an official list, re-extract the dataset"
            )
    rows = read_table(path, len(HEADER), "image id, class id, super-class id, path", numbered=True)
    out: list[tuple[int, int, int, int, str]] = []
    for line, (image_id, class_id, super_id, rel) in rows[1:]:
        if len(rel.split()) != 1:  # read_table keeps the rest of the line as the last field
            raise DataError(
                f"{path}:{line}: expected {len(HEADER)} fields, got {3 + len(rel.split())}; the file is"
                " corrupt, re-extract the dataset"
            )
        out.append(
            (
                line,
                parse_id(image_id, path, line),
                parse_id(class_id, path, line),
                parse_id(super_id, path, line),
                rel,
            )
        )
    return out
