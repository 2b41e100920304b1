"""A dataset of the user's own, listed in a CSV or parquet file: ``path``, ``label`` and optional
``split``, ``is_query``, ``is_gallery``, ``category`` columns (paths relative to the file).

Every problem is one line naming the file and the line (a parquet file: the row), found before
anything is decoded or written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import numpy as np

from harness.data.base import ROLES, ImageList
from harness.data.dataset import Dataset, Listing
from harness.errors import DataError
from harness.registry import DATASETS

COLUMNS = ("path", "label", "split", "is_query", "is_gallery", "category")
SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
TRUE = ("1", "true", "yes", "y", "t")
FALSE = ("0", "false", "no", "n", "f", "")


@DATASETS.register("csv")
class CSVList(Dataset):
    """Images listed one per row. Without a ``split`` column the classes are split at random
    (``test_fraction``, ``split_seed``); with one it is used as given, checked class-disjoint. With
    ``is_query`` / ``is_gallery`` the test classes are scored query against gallery (a column left
    out: every test image is one), else leave-one-out."""

    name = "csv"
    num_classes: ClassVar[int | None] = None
    num_images: ClassVar[int | None] = None
    train_classes: ClassVar[range | None] = None
    test_classes: ClassVar[range | None] = None
    root_hint = "the CSV or parquet file that lists the images"
    options = ("class_disjoint",)

    def __init__(self, class_disjoint: bool = True) -> None:
        self.class_disjoint = class_disjoint

    def find_root(self, root: Path) -> Path:
        root = Path(root)
        if root.is_file():
            if root.suffix.lower() not in SUFFIXES:
                raise DataError(f"{root}: not a .csv, .tsv or .parquet file; set data_root to the image list")
            return root
        if root.is_dir():
            found = sorted(p for p in root.iterdir() if p.suffix.lower() in SUFFIXES)
            if len(found) == 1:
                return found[0]
            listed = f" (it holds {', '.join(p.name for p in found)})" if found else ""
            raise DataError(f"data_root {root} is a folder{listed}; set data_root to the CSV or parquet file")
        raise self.missing_root(root, f"{root}: no such file")

    def read(self, root: Path) -> Listing:
        rows, where = _rows(root)
        images = listing(rows, where, root.parent, self.name, root, self.class_disjoint)
        return Listing(images, len(images.classes), "label column", root)


def _rows(path: Path) -> tuple[dict[str, list[str]], list[str]]:
    """The file's columns as text, and where each row is (``file:line`` or ``file row N``)."""
    import pandas as pd

    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            _need_pyarrow(path)
            frame = pd.read_parquet(path)
            frame = frame.apply(lambda column: column.map(_text))
            where = [f"{path} row {i + 1}" for i in range(len(frame))]
        else:
            sep = "\t" if path.suffix.lower() == ".tsv" else ","
            frame = pd.read_csv(
                path, dtype=str, keep_default_na=False, sep=sep, skipinitialspace=True, skip_blank_lines=False
            )
            where = [f"{path}:{i + 2}" for i in range(len(frame))]  # line 1 is the header
            blank = (frame.apply(lambda column: column.str.strip()) == "").all(axis=1).to_numpy()
            frame = frame[~blank]  # a blank line is no row, and the lines after it keep their numbers
            where = [w for w, b in zip(where, blank) if not b]
    except (ValueError, OSError, ImportError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: cannot read it as a table ({why}); check the file") from e
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    twice = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if twice:
        raise DataError(f"{path}: column {twice[0]!r} appears twice (names ignore case); keep one")
    for need in ("path", "label"):
        if need not in frame.columns:
            raise DataError(
                f"{path}: no {need!r} column (it has {', '.join(frame.columns) or 'none'}); the list needs"
                f" path and label, and may have {', '.join(COLUMNS[2:])}"
            )
    if not len(frame):
        raise DataError(f"{path}: no rows; list one image per row")
    cols = {c: [str(v).strip() for v in frame[c].tolist()] for c in COLUMNS if c in frame.columns}
    return cols, where


def _text(value: object) -> str:
    """A parquet cell as a CSV would read it: a null is empty, an integral float its integer."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _need_pyarrow(path: Path) -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise DataError(
            f"{path}: reading parquet needs pyarrow: pip install 'triplet-harness[parquet]' (or list the"
            " images in a .csv)"
        ) from None


def listing(
    cols: dict[str, list[str]], where: list[str], base: Path, dataset: str, path: Path, disjoint: bool = True
) -> ImageList:
    """Check the rows (``where``: how to name each in a message; ``path``: the file that lists them)
    and turn them into an ImageList of ``dataset`` with images under ``base`` (``folder`` too).
    ``disjoint``: a class in two splits is refused (false: the user's opt-out, class_disjoint)."""
    paths = cols["path"]
    first: dict[str, int] = {}  # each file by its real path: ./a.jpg, sub/../a.jpg and a link are a.jpg
    for i, p in enumerate(paths):
        if not p:
            raise DataError(f"{where[i]}: empty path")
        real = os.path.realpath(base / p)
        if real in first:
            j = first[real]
            also = "" if paths[j] == p else f" as {paths[j]}"
            raise DataError(
                f"{where[i]}: {p} is listed twice (first at {where[j]}{also}); list each image once"
            )
        first[real] = i
        if not (base / p).is_file():
            raise DataError(f"{where[i]}: image {base / p} does not exist; fix the path (relative to {base})")
    for i, y in enumerate(cols["label"]):
        if not y:
            raise DataError(f"{where[i]}: empty label")
    labels = ids(cols["label"])
    roles = _roles(cols.get("split"), where)
    query = _flags(cols, "is_query", where)
    gallery = _flags(cols, "is_gallery", where)
    if query is not None or gallery is not None:
        query = np.ones(len(paths), bool) if query is None else query
        gallery = np.ones(len(paths), bool) if gallery is None else gallery
    category = ids(cols["category"]) if "category" in cols else None
    _check_classes(labels, roles if disjoint else None, query, gallery, where, path, roles)
    return ImageList(dataset, base, tuple(paths), labels, roles, query, gallery, category)


def ids(values: list[str]) -> np.ndarray:
    """Class ids: the labels themselves when all are integers, else 1..C in sorted order of the names."""
    try:
        return np.asarray([int(v) for v in values], dtype=np.int64)
    except ValueError:
        names = {n: i for i, n in enumerate(sorted(set(values)), start=1)}
        return np.asarray([names[v] for v in values], dtype=np.int64)


def _roles(values: list[str] | None, where: list[str]) -> np.ndarray | None:
    if values is None:
        return None
    out = [v.lower() for v in values]
    for i, v in enumerate(out):
        if v not in ROLES:
            raise DataError(f"{where[i]}: split {values[i]!r} is not one of {', '.join(ROLES)}")
    return np.asarray(out)


def _flags(cols: dict[str, list[str]], name: str, where: list[str]) -> np.ndarray | None:
    if name not in cols:
        return None
    out = np.zeros(len(where), bool)
    for i, v in enumerate(cols[name]):
        if v.lower() in TRUE:
            out[i] = True
        elif v.lower() not in FALSE:
            raise DataError(f"{where[i]}: {name} {v!r} is not true or false (1/0, yes/no)")
    return out


def _check_classes(
    labels: np.ndarray,
    roles: np.ndarray | None,
    query: np.ndarray | None,
    gallery: np.ndarray | None,
    where: list[str],
    path: Path,
    given: np.ndarray | None,
) -> None:
    """Class-disjoint splits (``roles``; None: not checked), a positive pair wherever training or
    leave-one-out needs one, and a gallery image for every query (``given``: the split column)."""
    n = len(labels)
    role = roles if roles is not None else np.full(n, "")
    first_role: dict[tuple[int, str], int] = {}
    for i in range(n):
        first_role.setdefault((int(labels[i]), str(role[i])), i)
    seen: dict[int, int] = {}
    for (y, _), i in sorted(first_role.items(), key=lambda kv: kv[1]):
        if y in seen:
            j = seen[y]
            here, there = str(role[i]), str(role[j])
            raise DataError(
                f"{where[i]}: class {y} is in split {here!r} here and in {there!r} at {where[j]};"
                " the splits must be class-disjoint (unseen classes), or set class_disjoint: false"
            )
        seen[y] = i
    role = given if given is not None else role
    scored_by_pairs = (role != "test") | (query is None)  # training, validation, leave-one-out test
    pairs: dict[tuple[int, str], int] = {}  # images per class within a split
    for key in zip(labels.tolist(), role.tolist()):
        pairs[key] = pairs.get(key, 0) + 1
    for r in np.flatnonzero(scored_by_pairs).tolist():
        if pairs[(int(labels[r]), str(role[r]))] < 2:
            raise DataError(
                f"{where[r]}: class {labels[r]} has this one image; a class needs two or more to form a"
                " positive pair (add images, or drop the row)"
            )
    if query is None or gallery is None or given is None:
        return  # without a split the test classes are drawn later, and checked then
    test = role == "test"
    if not (gallery & test).any():
        raise DataError(f"{path}: no test image is in the gallery (is_gallery); the gallery is empty")
    in_gallery = _counts(labels[gallery & test])
    for r in np.flatnonzero(query & test).tolist():
        if in_gallery.get(int(labels[r]), 0) - int(gallery[r]) < 1:
            raise DataError(
                f"{where[r]}: query of class {labels[r]} has no gallery image of its class; mark one"
                " is_gallery, or drop the query"
            )


def _counts(labels: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(labels, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}
