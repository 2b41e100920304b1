"""Tiny synthetic copies of CUB-200-2011, Stanford Cars, Stanford Online Products and DeepFashion
In-Shop in their exact official layouts.

Images are small JPEGs whose colours depend on the class (plus per-image noise), so a model can
actually learn to separate classes; everything is seeded, so two calls give identical files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from harness.data.sop import CATEGORIES


def _palette(n_classes: int, seed: int) -> np.ndarray:
    """Two colours per class (top and bottom half): 6 numbers apart, so classes are separable."""
    return np.random.default_rng(seed).integers(20, 236, size=(n_classes, 2, 3)).astype(np.float32)


def _write_jpeg(
    path: Path, colours: np.ndarray, size: tuple[int, int], rng: np.random.Generator, noise: float = 12.0
) -> None:
    w, h = size
    img = np.empty((h, w, 3), dtype=np.float32)
    img[: h // 2] = colours[0]
    img[h // 2 :] = colours[1]
    img += rng.normal(0.0, noise, size=img.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)


def make_cub(
    root: Path,
    n_classes: int = 200,
    per_class: int = 3,
    size: tuple[int, int] = (40, 32),
    seed: int = 0,
    noise: float = 12.0,
) -> Path:
    """Write ``root/CUB_200_2011`` (images/, images.txt, labels, classes, split, boxes); return it.

    ``size`` is (width, height). Image ids run class by class, as in the official files. ``noise``
    (pixel s.d.) makes retrieval harder: the default leaves classes easy to tell apart.
    """
    cub = Path(root) / "CUB_200_2011"
    (cub / "images").mkdir(parents=True, exist_ok=True)
    palette = _palette(n_classes, seed)
    rng = np.random.default_rng(seed + 1)
    w, h = size
    images, labels, classes, split, boxes = [], [], [], [], []
    image_id = 0
    for c in range(1, n_classes + 1):
        name = f"Bird_Species_{c:03d}"
        folder = f"{c:03d}.{name}"
        (cub / "images" / folder).mkdir(exist_ok=True)
        classes.append(f"{c} {folder}")
        for k in range(1, per_class + 1):
            image_id += 1
            rel = f"{folder}/{name}_{k:04d}.jpg"
            _write_jpeg(cub / "images" / rel, palette[c - 1], size, rng, noise)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {k % 2}")
            boxes.append(f"{image_id} 2.0 3.0 {w - 4:.1f} {h - 6:.1f}")
    for filename, lines in (
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("classes.txt", classes),
        ("train_test_split.txt", split),
        ("bounding_boxes.txt", boxes),
    ):
        (cub / filename).write_text("\n".join(lines) + "\n")
    return cub


_BOX_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")


def _struct_array(fields: tuple[str, ...], rows: list[tuple]) -> np.ndarray:
    """A (1, N) MATLAB struct array, the shape of the official ``annotations`` variables."""
    arr = np.zeros((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        arr[0, i] = row
    return arr


def _cell(strings: list[str]) -> np.ndarray:
    return np.array(strings, dtype=object).reshape(1, -1)


def make_cars(
    root: Path,
    layout: str = "annos",
    n_classes: int = 196,
    per_class: int = 2,
    size: tuple[int, int] = (40, 32),
    seed: int = 0,
    test_annos_in_devkit: bool = False,
    noise: float = 12.0,
) -> Path:
    """Write Stanford Cars under ``root`` in the official ``"annos"`` or ``"devkit"`` layout; return root.

    Both layouts hold the same images and labels (every other image of a class is a test image),
    so loaders of the two can be compared. ``test_annos_in_devkit`` puts
    cars_test_annos_withlabels.mat under devkit/ instead of the root, as some copies do.
    """
    if layout not in ("annos", "devkit"):
        raise ValueError(f"layout must be 'annos' or 'devkit', not {layout!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    palette = _palette(n_classes, seed)
    rng = np.random.default_rng(seed + 1)
    w, h = size
    box = (np.uint16(1), np.uint16(2), np.uint16(w - 2), np.uint16(h - 3))
    names = [f"Make{c:03d} Model {2000 + c % 13}" for c in range(1, n_classes + 1)]

    if layout == "annos":
        (root / "car_ims").mkdir(exist_ok=True)
        rows = []
        for c in range(1, n_classes + 1):
            for k in range(per_class):
                rel = f"car_ims/{len(rows) + 1:06d}.jpg"
                _write_jpeg(root / rel, palette[c - 1], size, rng, noise)
                rows.append((rel, *box, np.uint16(c), np.uint8(k % 2)))
        annotations = _struct_array(("relative_im_path", *_BOX_FIELDS, "class", "test"), rows)
        scipy.io.savemat(root / "cars_annos.mat", {"annotations": annotations, "class_names": _cell(names)})
        return root

    for folder in ("devkit", "cars_train", "cars_test"):
        (root / folder).mkdir(exist_ok=True)
    train: list[tuple] = []
    test: list[tuple] = []
    for c in range(1, n_classes + 1):
        for k in range(per_class):
            rows, folder = (test, "cars_test") if k % 2 else (train, "cars_train")
            fname = f"{len(rows) + 1:05d}.jpg"
            _write_jpeg(root / folder / fname, palette[c - 1], size, rng, noise)
            rows.append((*box, np.uint16(c), fname))
    fields = (*_BOX_FIELDS, "class", "fname")
    scipy.io.savemat(root / "devkit" / "cars_meta.mat", {"class_names": _cell(names)})
    scipy.io.savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": _struct_array(fields, train)})
    # The devkit's own test file has no labels; loaders must not use it.
    unlabeled = [(*r[:4], r[5]) for r in test]
    scipy.io.savemat(
        root / "devkit" / "cars_test_annos.mat",
        {"annotations": _struct_array((*_BOX_FIELDS, "fname"), unlabeled)},
    )
    test_mat = root / ("devkit" if test_annos_in_devkit else ".") / "cars_test_annos_withlabels.mat"
    scipy.io.savemat(test_mat, {"annotations": _struct_array(fields, test)})
    return root


def _count(spec: int | tuple[int, int], i: int) -> int:
    """``spec`` images, or for (lo, hi) a count cycling through lo..hi with ``i``: uneven classes."""
    lo, hi = (spec, spec) if isinstance(spec, int) else spec
    return lo + i % (hi - lo + 1)


def make_sop(
    root: Path,
    n_classes: int = 24,
    per_class: int | tuple[int, int] = (2, 4),
    categories: tuple[str, ...] = ("bicycle", "chair", "lamp", "mug"),
    first_test_class: int = 11319,
    size: tuple[int, int] = (40, 32),
    seed: int = 0,
    noise: float = 12.0,
) -> Path:
    """Write ``root/Stanford_Online_Products`` (Ebay_train/test/info.txt, <category>_final/); return it.

    The first half of the ``n_classes`` products train (class ids 1, 2, ...), the rest test with ids
    from ``first_test_class`` on (the official 11319: the loader checks the official ranges). Each
    split's products fall into ``categories`` in blocks, as the official ids run category by
    category; ``per_class`` (lo, hi) gives the classes lo..hi images. Image ids count per file.
    """
    sop = Path(root) / "Stanford_Online_Products"
    sop.mkdir(parents=True, exist_ok=True)
    palette = _palette(n_classes, seed)
    rng = np.random.default_rng(seed + 1)
    header = "image_id class_id super_class_id path"
    n_train = n_classes // 2
    info: list[str] = []
    for filename, ids in (
        ("Ebay_train.txt", list(range(1, n_train + 1))),
        ("Ebay_test.txt", list(range(first_test_class, first_test_class + n_classes - n_train))),
    ):
        rows = [header]
        for i, class_id in enumerate(ids):
            category = categories[i * len(categories) // len(ids)]
            (sop / f"{category}_final").mkdir(exist_ok=True)
            product = 110000000000 + class_id
            for k in range(_count(per_class, i)):
                rel = f"{category}_final/{product}_{k}.JPG"
                colour = palette[i if filename == "Ebay_train.txt" else n_train + i]
                _write_jpeg(sop / rel, colour, size, rng, noise)
                row = f"{class_id} {CATEGORIES.index(category) + 1} {rel}"
                rows.append(f"{len(rows)} {row}")
                info.append(f"{len(info) + 1} {row}")
        (sop / filename).write_text("\n".join(rows) + "\n")
    (sop / "Ebay_info.txt").write_text("\n".join([header, *info]) + "\n")
    return sop


_VIEWS = ("front", "side", "back", "full", "additional")


def make_inshop(
    root: Path,
    n_train: int = 10,
    n_test: int = 10,
    train_images: int | tuple[int, int] = (2, 4),
    queries: int | tuple[int, int] = (1, 2),
    gallery: int | tuple[int, int] = (1, 3),
    partition_in_eval: bool = True,
    size: tuple[int, int] = (40, 32),
    seed: int = 0,
    noise: float = 12.0,
) -> Path:
    """Write In-Shop under ``root`` (img/<MEN|WOMEN>/<category>/id_XXXXXXXX/, the partition); return root.

    Train and test items interleave (every other item id tests), as the official ids are not ordered
    by split; each test item has ``queries`` query and ``gallery`` gallery images. The partition goes
    to Eval/ (official) or, with ``partition_in_eval`` false, beside img/.
    """
    root = Path(root)
    n_items = n_train + n_test
    palette = _palette(n_items, seed)
    rng = np.random.default_rng(seed + 1)
    left = {"train": n_train, "test": n_test}
    test_items: set[int] = set()
    for item in range(1, n_items + 1):  # even ids test while both splits have items left
        split = "test" if left["test"] and (item % 2 == 0 or not left["train"]) else "train"
        left[split] -= 1
        if split == "test":
            test_items.add(item)
    rows: list[str] = []
    for item in range(1, n_items + 1):
        gender, category = ("WOMEN", "Blouses_Shirts") if item % 3 else ("MEN", "Denim")
        folder = f"img/{gender}/{category}/id_{item:08d}"
        (root / folder).mkdir(parents=True, exist_ok=True)
        if item in test_items:
            j = len(test_items & set(range(1, item)))  # this test item's index
            status = ["query"] * _count(queries, j) + ["gallery"] * _count(gallery, j)
        else:
            status = ["train"] * _count(train_images, item)
        for k, what in enumerate(status):
            rel = f"{folder}/{k // len(_VIEWS) + 1:02d}_{k % len(_VIEWS) + 1}_{_VIEWS[k % len(_VIEWS)]}.jpg"
            _write_jpeg(root / rel, palette[item - 1], size, rng, noise)
            rows.append(f"{rel} id_{item:08d} {what}")
    partition = (
        root / "Eval" / "list_eval_partition.txt" if partition_in_eval else root / "list_eval_partition.txt"
    )
    partition.parent.mkdir(parents=True, exist_ok=True)
    partition.write_text("\n".join([str(len(rows)), "image_name item_id evaluation_status", *rows]) + "\n")
    return root
