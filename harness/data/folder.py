"""A dataset of the user's own in ImageFolder's layout: ``root/<class>/<image>`` (images in
subfolders of a class folder count as that class's).

Class ids are 1..C in sorted order of the folder names. The classes are split at random
(``test_fraction``, ``split_seed``), or as a ``split_file`` gives: one ``<class folder> <split>``
line per class, split one of train, validation, test.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from harness.data.base import ROLES
from harness.data.csvlist import listing
from harness.data.dataset import Dataset, Listing
from harness.errors import DataError
from harness.registry import DATASETS

# the suffixes torchvision's ImageFolder reads (IMG_EXTENSIONS), that Pillow decodes
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@DATASETS.register("folder")
class ImageFolder(Dataset):
    name = "folder"
    num_classes: ClassVar[int | None] = None
    num_images: ClassVar[int | None] = None
    train_classes: ClassVar[range | None] = None
    test_classes: ClassVar[range | None] = None
    root_hint = "the folder holding one folder per class"
    options = ("split_file",)

    def __init__(self, split_file: str | None = None) -> None:
        self.split_file = split_file

    def find_root(self, root: Path) -> Path:
        root = Path(root)
        if not root.is_dir():
            raise self.missing_root(
                root, f"data_root {root} is a file; set it to the folder of class folders"
            )
        if not any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
            raise DataError(f"{root} holds no class folders; the layout is {root}/<class>/<image>")
        return root

    def read(self, root: Path) -> Listing:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        paths: list[str] = []
        names: list[str] = []
        for c in classes:
            found = sorted(_images(root / c, root))
            if not found:
                raise DataError(
                    f"{root / c}: no images ({', '.join(IMAGE_SUFFIXES)}); add some or remove the folder"
                )
            paths += found
            names += [c] * len(found)
        ids = {c: str(i) for i, c in enumerate(classes, start=1)}
        cols = {"path": paths, "label": [ids[n] for n in names]}
        if self.split_file:
            split = self._split(root, classes)
            cols["split"] = [split[n] for n in names]
        where = [f"{root / p}" for p in paths]
        images = listing(cols, where, root, self.name, root)
        return Listing(images, len(classes), "class folders", root)

    def _split(self, root: Path, classes: list[str]) -> dict[str, str]:
        path = Path(self.split_file or "")
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise DataError(
                f"split_file {path} does not exist; write one '<class folder> <split>' line per class"
            )
        out: dict[str, str] = {}
        for line, text in enumerate(path.read_text().splitlines(), start=1):
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            parts = text.rsplit(maxsplit=1)
            if len(parts) != 2 or parts[1].lower() not in ROLES:
                raise DataError(f"{path}:{line}: expected '<class folder> <{'|'.join(ROLES)}>', got {text!r}")
            name, role = parts[0].strip(), parts[1].lower()
            if name not in classes:
                raise DataError(f"{path}:{line}: no class folder {name!r} under {root}")
            if name in out:
                raise DataError(f"{path}:{line}: class {name!r} is listed twice; give each class one split")
            out[name] = role
        missing = [c for c in classes if c not in out]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DataError(
                f"{path}: class folder {missing[0]!r}{more} has no line; give every class a split"
            )
        return out


def _within(path: str, inside: str) -> bool:
    return (os.path.realpath(path) + os.sep).startswith(inside)


def _images(folder: Path, root: Path) -> list[str]:
    out = []
    inside = os.path.realpath(root) + os.sep
    seen: set[str] = set()  # real folders walked: a link cycle outside the dataset is walked once
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        # a linked folder is followed when it leads out of the dataset (images on another disk), not
        # when it leads back into it (another class's images, or a loop)
        dirnames[:] = [
            d
            for d in dirnames
            if not d.startswith(".")
            and not (os.path.islink(os.path.join(dirpath, d)) and _within(os.path.join(dirpath, d), inside))
        ]
        for f in filenames:
            if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES):
                out.append(str((Path(dirpath) / f).relative_to(root)))
    return out
