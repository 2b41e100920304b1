"""Class-disjoint splits: validation classes are carved out of the TRAIN classes only.

Hyperparameter search sees ``train`` and ``val``; ``test`` is read only by the final evaluation.
The manifest written next to every study records the class ids of each split and a hash, and
``make_split`` refuses to return overlapping splits.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.data.base import QUERY_GALLERY, ImageList
from harness.errors import ConfigError, DataError


def carve_out(n_train_classes: int, val_fraction: float) -> tuple[int, int]:
    """(classes left to train on, validation classes) when ``val_fraction`` of the training classes
    become validation classes: the rule of the split, and of the config check that runs before it."""
    n_val = max(2, int(round(val_fraction * n_train_classes)))
    return n_train_classes - n_val, n_val


@dataclass(frozen=True)
class ClassSplit:
    """Which classes train and which test, and whence: ``official`` (the benchmark's class ranges),
    ``given`` (the dataset's own per-image split: In-Shop's partition, a CSV's ``split`` column) or
    ``seeded`` (``test_fraction`` of the classes, drawn with ``split_seed``)."""

    train: list[int]
    test: list[int]
    how: str
    validation: list[int] | None = None  # given validation classes: used instead of a carve-out
    disjoint: bool = True  # false: the given splits share classes (each image keeps its role)


def dataset_classes(
    spec: Any, images: ImageList, test_fraction: float = 0.5, split_seed: int = 0
) -> ClassSplit:
    """The train/test classes of ``images``: the split the dataset gives its images, else its
    official class ranges, else a seeded class-disjoint draw (a dataset of the user's own)."""
    if images.roles is not None:
        roles = np.asarray(images.roles)
        by = {r: np.unique(images.labels[roles == r]).tolist() for r in ("train", "validation", "test")}
        if not spec.class_disjoint:
            return ClassSplit(by["train"], by["test"], "given", by["validation"] or None, disjoint=False)
        for a, b in (("train", "test"), ("train", "validation"), ("validation", "test")):
            both = sorted(set(by[a]) & set(by[b]))
            if both:
                raise DataError(
                    f"{images.dataset}: class {both[0]} has images in both the {a} and the {b} split;"
                    " the splits must be class-disjoint"
                )
        return ClassSplit(by["train"], by["test"], "given", by["validation"] or None)
    if spec.train_classes is not None:
        return ClassSplit(list(spec.train_classes), list(spec.test_classes), "official")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    classes = images.classes
    n_test = int(round(test_fraction * len(classes)))
    test = np.sort(np.random.default_rng(split_seed).choice(classes, size=n_test, replace=False))
    return ClassSplit(np.setdiff1d(classes, test).tolist(), test.tolist(), "seeded")


def training_images(cfg: Any, images: ImageList) -> np.ndarray:
    """Indices of every image of the official training side (train and validation): with the split
    the data gives, the rows not in test; else the images of the training classes. ``cfg``: a study
    config (its dataset and the draw of a dataset without a split)."""
    if images.roles is not None:
        return np.flatnonzero(np.asarray(images.roles) != "test")
    classes = dataset_classes(cfg.dataset_spec(), images, cfg.test_fraction, cfg.split_seed)
    return np.flatnonzero(np.isin(images.labels, classes.train + (classes.validation or [])))


@dataclass(frozen=True)
class Split:
    """Index arrays into the full dataset's ImageList, one per role."""

    images: ImageList
    train: np.ndarray  # train classes minus validation classes: what HPO trains on
    val: np.ndarray  # validation classes (carved from train classes): what HPO scores on
    test: np.ndarray  # official test classes: final evaluation only
    manifest: dict
    folds: tuple[np.ndarray, ...] = ()  # val_folds > 1: each fold's validation class ids (disjoint)

    @property
    def n_folds(self) -> int:
        return max(1, len(self.folds))

    def fold(self, f: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, validation) image indices of fold ``f``: the other folds' classes train, its own
        validate. With one fold, the carve-out (``train``, ``val``)."""
        if not self.folds:
            if f != 0:
                raise IndexError(f"fold {f} of a single carve-out")
            return self.train, self.val
        labels = self.images.labels
        val = np.flatnonzero(np.isin(labels, self.folds[f]))
        return np.setdiff1d(self.trainval, val), val

    @property
    def trainval(self) -> np.ndarray:
        """All official train classes: what the chosen configs are re-trained on."""
        return np.sort(np.concatenate([self.train, self.val]))

    def labels(self, idx: np.ndarray) -> np.ndarray:
        return self.images.labels[idx]

    def test_masks(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(query, gallery) flags of the test images, or (None, None) for leave-one-out."""
        if self.images.query is None or self.images.gallery is None:
            return None, None
        return self.images.query[self.test].astype(bool), self.images.gallery[self.test].astype(bool)


def make_split(
    images: ImageList,
    train_classes: range | list[int],
    test_classes: range | list[int],
    val_fraction: float = 0.2,
    seed: int = 0,
    val_folds: int = 1,
    val_classes: list[int] | None = None,
    classes_split: str = "official",
) -> Split:
    """Class-disjoint splits of ``images``. ``val_folds`` = 1: ``val_fraction`` of the training
    classes (seeded) validate. ``val_folds`` = k > 1: the training classes fall into k disjoint folds
    of (nearly) equal size, each validating once while the others train (``fold``); ``train`` and
    ``val`` are then fold 0's, and ``val_fraction`` is not used. ``val_classes``: the validation
    classes the dataset gives (a CSV's ``validation`` split), used as they are; ``train_classes``
    then excludes them. ``classes_split``: how the train/test classes came (``ClassSplit.how``),
    recorded unless official."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    present = set(images.classes.tolist())
    train_c = np.array(sorted(c for c in train_classes if c in present), dtype=np.int64)
    test_c = np.array(sorted(c for c in test_classes if c in present), dtype=np.int64)
    rng = np.random.default_rng(seed)
    folds: tuple[np.ndarray, ...] = ()
    given = None if val_classes is None else np.array(sorted(c for c in val_classes if c in present))
    if given is not None:
        if val_folds > 1:
            raise ConfigError(
                f"{images.dataset}: the data gives its own validation split, and val_folds {val_folds}"
                " would draw folds instead; set val_folds: 1, or drop the validation rows' split"
            )
        if len(given) < 2:
            raise DataError(
                f"{images.dataset}: the validation split has {len(given)} class; it needs at least 2"
            )
        train_c = np.union1d(train_c, given)
    if len(train_c) < 4 or len(test_c) < 2:
        raise DataError(
            f"{images.dataset}: only {len(train_c)} train and {len(test_c)} test classes present; a split"
            " needs at least 4 and 2 (an incomplete copy, or a test_fraction that leaves too few)"
        )
    if val_folds > 1:
        if len(train_c) // val_folds < 2:
            raise ConfigError(
                f"val_folds {val_folds} leaves fewer than 2 of the {len(train_c)} training classes per fold;"
                " lower val_folds"
            )
        folds = tuple(np.sort(f) for f in np.array_split(rng.permutation(train_c), val_folds))
    if given is not None:
        n_fit, n_val = len(train_c) - len(given), len(given)
    else:
        n_fit, n_val = (
            carve_out(len(train_c), val_fraction)
            if not folds
            else (len(train_c) - len(folds[0]), len(folds[0]))
        )
    if n_fit < 2 and given is not None:
        raise DataError(
            f"{images.dataset}: the validation split holds {n_val} of the {len(train_c)} training classes,"
            f" leaving {n_fit} to train on; move classes from validation to train"
        )
    if n_fit < 2:
        raise ConfigError(
            f"val_fraction {val_fraction} makes {n_val} of the {len(train_c)} training classes validation"
            f" classes, leaving {n_fit} to train on; lower val_fraction"
        )
    if given is not None:
        val_c = given
    else:
        val_c = np.sort(rng.choice(train_c, size=n_val, replace=False)) if not folds else folds[0]
    fit_c = np.setdiff1d(train_c, val_c)
    for a, b, what in (
        (fit_c, val_c, "train/val"),
        (train_c, test_c, "train/test"),
        (val_c, test_c, "val/test"),
    ):
        both = np.intersect1d(a, b)
        if len(both):
            raise DataError(
                f"{what} splits share classes {both.tolist()[:10]}; the split is not class-disjoint"
            )
    labels = images.labels
    idx = {
        name: np.flatnonzero(np.isin(labels, c))
        for name, c in (("train", fit_c), ("val", val_c), ("test", test_c))
    }
    classes = {"train": fit_c.tolist(), "val": val_c.tolist(), "test": test_c.tolist()}
    body = _body(images, idx, classes, val_fraction, seed)
    if classes_split != "official":
        body["classes_split"] = classes_split
    if given is not None:
        body["val_fraction"] = None
        body["validation"] = "given"
    if images.query is not None:  # the test classes are scored query against gallery
        body["protocol"] = test_protocol(images, idx["test"])
    identity: dict = dict(classes)
    if folds:  # every fold is part of what the search was run on
        body["val_folds"] = val_folds
        body["folds"] = [f.tolist() for f in folds]
        body["val_fraction"] = None
        identity = identity | {"folds": body["folds"]}
    body["hash"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    body["overlap"] = {"train_val": [], "train_test": [], "val_test": []}
    return Split(images, idx["train"], idx["val"], idx["test"], body, folds)


def _body(
    images: ImageList, idx: dict[str, np.ndarray], classes: dict, val_fraction: float, seed: int
) -> dict:
    """The manifest's description of a split: the data, the classes and images of each role."""
    labels = images.labels
    return {
        "dataset": images.dataset,
        "dataset_fingerprint": images.fingerprint(),
        "dataset_files": images.files_fingerprint(),
        "val_fraction": val_fraction,
        "seed": seed,
        "classes": classes,
        "num_images": {k: int(len(v)) for k, v in idx.items()},
        "num_classes": {k: len(v) for k, v in classes.items()},
        # a batch takes K images per class: a class with fewer is sampled with replacement
        "min_images_per_class": {
            k: int(np.unique(labels[v], return_counts=True)[1].min()) if len(v) else 0 for k, v in idx.items()
        },
    }


def split_by_roles(
    images: ImageList,
    val_fraction: float = 0.2,
    seed: int = 0,
    val_folds: int = 1,
    classes_split: str = "given",
) -> Split:
    """The split of a list whose splits share classes (``class_disjoint: false``): each image keeps
    the split its row gives; without validation rows, ``val_fraction`` of the training images'
    classes (seeded) validate and their training images leave training. The manifest says the
    split is not class-disjoint, lists the shared classes, and its hash covers every image's role."""
    assert images.roles is not None
    if val_folds > 1:
        raise ConfigError(
            f"{images.dataset}: class_disjoint: false keeps each image in the split its row gives, and"
            f" val_folds {val_folds} would draw class folds; set val_folds: 1"
        )
    roles, labels = np.asarray(images.roles), images.labels
    train, val, test = (np.flatnonzero(roles == r) for r in ("train", "validation", "test"))
    if not len(train) or not len(test):
        raise DataError(f"{images.dataset}: {len(train)} train and {len(test)} test images; both are needed")
    validation = "given"
    if not len(val):
        train_c = np.unique(labels[train])
        n_fit, n_val = carve_out(len(train_c), val_fraction)
        if n_fit < 2:
            raise ConfigError(
                f"val_fraction {val_fraction} makes {n_val} of the {len(train_c)} training classes validation"
                f" classes, leaving {n_fit} to train on; lower val_fraction"
            )
        val_c = np.random.default_rng(seed).choice(train_c, size=n_val, replace=False)
        held = np.isin(labels[train], val_c)
        train, val, validation = train[~held], train[held], "carved"
    idx = {"train": train, "val": val, "test": test}
    classes = {k: np.unique(labels[v]).tolist() for k, v in idx.items()}
    body = _body(images, idx, classes, val_fraction, seed)
    body |= {"classes_split": classes_split, "class_disjoint": False, "validation": validation}
    if validation == "given":
        body["val_fraction"] = None
    if images.query is not None:
        body["protocol"] = test_protocol(images, test)
    rows = (f"{path}\t{role}" for path, role in zip(images.paths, roles.tolist()))
    digest = hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]
    body["roles"] = digest
    identity = classes | {"roles": digest}
    body["hash"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    body["overlap"] = {
        f"{a}_{b}": np.intersect1d(classes[a], classes[b]).tolist()
        for a, b in (("train", "val"), ("train", "test"), ("val", "test"))
    }
    return Split(images, train, val, test, body)


def test_protocol(images: ImageList, test: np.ndarray) -> dict:
    """The query/gallery protocol of the test images, checked: every query has a gallery image of
    its class other than itself, and the gallery is not empty."""
    assert images.query is not None and images.gallery is not None
    q, g, y = images.query[test].astype(bool), images.gallery[test].astype(bool), images.labels[test]
    if not q.any() or not g.any():
        raise DataError(
            f"{images.dataset}: the test classes have {int(q.sum())} queries and {int(g.sum())} gallery"
            " images; both are needed"
        )
    per_class = dict(zip(*np.unique(y[g], return_counts=True)))
    for i in np.flatnonzero(q):
        if per_class.get(y[i], 0) - int(g[i]) < 1:
            raise DataError(
                f"{images.dataset}: query {images.paths[test[i]]} (class {y[i]}) has no gallery image of its"
                " class; mark one of its class's images is_gallery, or drop the query"
            )
    return {"test": QUERY_GALLERY, "queries": int(q.sum()), "gallery": int(g.sum())}


def write_manifest(split: Split, path: Path) -> None:
    """Atomic, and a no-op when unchanged: an untouched mtime keeps Snakemake from re-running jobs."""
    text = json.dumps(split.manifest, indent=1)
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def check_manifest(manifest: dict) -> None:
    """Re-check a stored manifest (the evaluation does this before touching test classes). A split the
    user declared not class-disjoint (``class_disjoint: false``) shares classes by design: its hash,
    over every image's split, is what the evaluation compares."""
    if manifest.get("class_disjoint") is False:
        return
    c = {k: set(v) for k, v in manifest["classes"].items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        if c[a] & c[b]:
            raise DataError(f"split manifest: {a} and {b} share classes {sorted(c[a] & c[b])[:10]}")
    folds = [set(f) for f in manifest.get("folds", [])]
    for i, f in enumerate(folds):
        if f & c["test"] or any(f & g for g in folds[i + 1 :]):
            raise DataError(
                f"split manifest: validation fold {i} shares classes with another fold or the test"
            )
