"""Stanford Cars-196 on either official layout: ``cars_annos.mat`` + ``car_ims/``, or the devkit."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data.base import ImageList
from harness.data.dataset import Dataset, Listing
from harness.data.download import Archive
from harness.errors import DataError
from harness.registry import DATASETS

ANNOS_MAT = "cars_annos.mat"
META_MAT = "devkit/cars_meta.mat"
TRAIN_MAT = "devkit/cars_train_annos.mat"
TEST_MAT = "cars_test_annos_withlabels.mat"


def _loadmat(path: Path, what: str) -> dict:
    """Read a .mat file; every way it can fail becomes one DataError naming the file."""
    # scipy.io is imported here so that importing the dataset registry stays cheap.
    import scipy.io

    if not path.is_file():
        raise DataError(f"missing metadata file {path}: {what}; check data_root points at the dataset")
    try:
        # squeeze_me turns the official (1, N) struct array into a flat record array, and
        # each 1x1 field into a scalar; savemat-written files come back the same way.
        return scipy.io.loadmat(str(path), squeeze_me=True)
    except NotImplementedError as e:  # MATLAB v7.3 (HDF5) files
        raise DataError(f"{path}: {e}; re-download the official file (it is a MATLAB v5 .mat)") from e
    except Exception as e:  # scipy raises ValueError, TypeError, OSError... on corrupt files
        raise DataError(f"{path}: cannot read it as a .mat file ({e}); re-download it") from e


def _records(mat: dict, path: Path, fields: tuple[str, ...]) -> np.ndarray:
    """The ``annotations`` struct array as a 1-D record array, with the fields we need checked."""
    ann = mat.get("annotations")
    if ann is None or not isinstance(ann, np.ndarray) or ann.dtype.names is None:
        raise DataError(f"{path}: no 'annotations' struct array; the file is not an official annotation file")
    missing = [f for f in fields if f not in ann.dtype.names]
    if missing:
        raise DataError(
            f"{path}: annotations lack field(s) {', '.join(missing)}; this is not the expected file"
            " (the devkit's cars_test_annos.mat has no labels: use cars_test_annos_withlabels.mat)"
        )
    return np.atleast_1d(ann)


def _class_ids(values: np.ndarray, path: Path) -> np.ndarray:
    """Official 1-based class ids as int64; non-integral or non-numeric values are corruption."""
    try:
        raw = np.asarray(values.tolist(), dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: 'class' field is not numeric ({e}); re-download the file") from e
    if raw.ndim != 1 or not np.all(np.isfinite(raw)) or not np.all(raw == np.round(raw)):
        raise DataError(f"{path}: 'class' field holds non-integer values; re-download the file")
    return raw.astype(np.int64)


def _class_names(mat: dict, path: Path) -> list[str]:
    names = mat.get("class_names")
    if names is None:
        raise DataError(f"{path}: no 'class_names' variable; re-download the official file")
    return [str(n) for n in np.atleast_1d(names).tolist()]


@DATASETS.register("cars")
class Cars196(Dataset):
    """Stanford Cars (Krause et al. 2013); retrieval protocol: classes 1-98 train, 99-196 test.

    The per-image ``test`` flag of ``cars_annos.mat`` (and the devkit's train/test files) is the
    classification split and only decides the order of the devkit layout, never the split.
    """

    name = "cars"
    num_classes = 196
    num_images = 16185
    train_classes = range(1, 99)
    test_classes = range(99, 197)
    shared_copy = "../shared/data/cars196-128"
    # Folders the dataset is commonly unpacked into (torchvision uses stanford_cars/).
    folders = ("stanford_cars", "cars196", "Cars196")
    # Layout (a), the one download() fetches. md5s as published by KevinMusgrave/powerful-benchmarker
    # (src/powerful_benchmarker/datasets/cars196.py) and several other loaders of these exact files.
    archives = (
        Archive(
            url="http://ai.stanford.edu/~jkrause/car196/car_ims.tgz",
            filename="car_ims.tgz",
            md5="d5c8f0aa497503f355e17dc7886c3f14",
        ),
        Archive(
            url="http://ai.stanford.edu/~jkrause/car196/cars_annos.mat",
            filename=ANNOS_MAT,
            md5="b407c6086d669747186bd1d764ff9dbc",
            extract=False,
        ),
    )
    # Layout (b), for reference and manual downloads; URLs and md5s from torchvision's
    # StanfordCars.download (torchvision/datasets/stanford_cars.py, before the download was removed).
    devkit_archives = (
        Archive(
            url="https://ai.stanford.edu/~jkrause/cars/car_devkit.tgz",
            filename="car_devkit.tgz",
            md5="c3b158d763b6e2245038c8ad08e45376",
        ),
        Archive(
            url="https://ai.stanford.edu/~jkrause/car196/cars_train.tgz",
            filename="cars_train.tgz",
            md5="065e5b463ae28d29e77c1b4b166cfe61",
        ),
        Archive(
            url="https://ai.stanford.edu/~jkrause/car196/cars_test.tgz",
            filename="cars_test.tgz",
            md5="4ce7ebf6a94d07f1952d94dd34c4d501",
        ),
        Archive(
            url="https://ai.stanford.edu/~jkrause/car196/cars_test_annos_withlabels.mat",
            filename=TEST_MAT,
            md5="b0a2b23655a3edd16d84508592a98d10",
            extract=False,
        ),
    )

    @staticmethod
    def layout(root: Path) -> str | None:
        """``"annos"`` or ``"devkit"`` for a dataset root, None if neither; annos wins if both."""
        if (root / ANNOS_MAT).is_file():
            return "annos"
        if (root / TRAIN_MAT).is_file():
            return "devkit"
        return None

    def find_root(self, root: Path) -> Path:
        """Accept the folder holding cars_annos.mat or devkit/, or the folder above it."""
        root = Path(root)
        for candidate in (root, *(root / f for f in self.folders)):
            if self.layout(candidate) is not None:
                return candidate
        raise self.missing_root(
            root,
            f"neither {ANNOS_MAT} nor {TRAIN_MAT} under {root}; set data_root to the folder holding"
            f" {ANNOS_MAT} + car_ims/ (or the devkit layout: devkit/, cars_train/, cars_test/)",
        )

    def read(self, root: Path) -> Listing:
        if self.layout(root) == "annos":
            paths, ys, names, where = self._load_annos(root)
        else:
            paths, ys, names, where = self._load_devkit(root)
        labels = np.asarray(ys, dtype=np.int64)
        if len(labels) and (labels.min() < 1 or labels.max() > len(names)):
            bad = int(labels.min() if labels.min() < 1 else labels.max())
            raise DataError(
                f"{where}: class id {bad} outside 1..{len(names)} (the class_names list);"
                " the metadata files do not belong together, re-extract the dataset"
            )
        return Listing(ImageList(self.name, root, tuple(paths), labels), len(names), "class_names", where)

    def _load_annos(self, root: Path) -> tuple[list[str], np.ndarray, list[str], Path]:
        path = root / ANNOS_MAT
        mat = _loadmat(path, "image list, class ids and class names")
        ann = _records(mat, path, ("relative_im_path", "class"))
        paths = [str(p) for p in ann["relative_im_path"].tolist()]
        return paths, _class_ids(ann["class"], path), _class_names(mat, path), path

    def _load_devkit(self, root: Path) -> tuple[list[str], np.ndarray, list[str], Path]:
        names = _class_names(_loadmat(root / META_MAT, "class names of the devkit"), root / META_MAT)
        test_mat = root / TEST_MAT
        if not test_mat.is_file() and (root / "devkit" / TEST_MAT).is_file():
            test_mat = root / "devkit" / TEST_MAT
        if not test_mat.is_file():
            raise DataError(
                f"missing {root / TEST_MAT} (test labels, not part of car_devkit.tgz); download it from"
                f" {self.devkit_archives[3].url} into {root}"
            )
        paths: list[str] = []
        ys: list[np.ndarray] = []
        for mat_path, folder in ((root / TRAIN_MAT, "cars_train"), (test_mat, "cars_test")):
            ann = _records(_loadmat(mat_path, f"annotations of {folder}/"), mat_path, ("fname", "class"))
            paths += [f"{folder}/{f}" for f in ann["fname"].tolist()]
            ys.append(_class_ids(ann["class"], mat_path))
        return paths, np.concatenate(ys), names, root
