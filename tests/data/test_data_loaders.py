"""Dataset loaders on synthetic copies of the official layouts, and on the real CUB copy if present."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fixtures import make_cars, make_cub
from helpers import SHARED
from PIL import Image

from harness.data import DATASETS, ImageList, get_dataset
from harness.data.cars import Cars196
from harness.data.cub import CUB200
from harness.errors import ConfigError, DataError

REAL_CUB = SHARED / "data" / "cub200-128"


# --- fixtures themselves -------------------------------------------------------------------------


def test_fixtures_are_fast_and_class_dependent(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    cub = make_cub(tmp_path / "cub")
    make_cars(tmp_path / "annos")
    make_cars(tmp_path / "devkit", layout="devkit")
    assert time.perf_counter() - t0 < 10.0  # generous for slow CI; ~1 s locally
    images = CUB200().load(cub, strict_counts=False)
    means = {}
    for i in range(len(images)):
        arr = np.asarray(Image.open(images.absolute(i)), dtype=np.float32)
        assert arr.shape == (32, 40, 3)
        means.setdefault(int(images.labels[i]), []).append(arr.reshape(-1, 3).mean(0))
    # Same class: near-identical mean colour; different classes: clearly apart (on average).
    within = np.mean([np.abs(v[0] - v[1]).max() for v in means.values()])
    between = np.mean([np.abs(means[c][0] - means[c + 1][0]).max() for c in range(1, 200)])
    assert within < 5 < between


def test_fixtures_are_deterministic(tmp_path: Path) -> None:
    a = make_cub(tmp_path / "a", n_classes=3)
    b = make_cub(tmp_path / "b", n_classes=3)
    rel = "images/002.Bird_Species_002/Bird_Species_002_0001.jpg"
    assert (a / rel).read_bytes() == (b / rel).read_bytes()


# --- CUB ---------------------------------------------------------------------------------------


def test_cub_fixture_loads(tmp_path: Path) -> None:
    root = make_cub(tmp_path)
    images = CUB200().load(tmp_path, strict_counts=False)  # the folder above CUB_200_2011 works too
    assert isinstance(images, ImageList)
    assert len(images) == 600
    assert images.image_dir == root / "images"
    assert images.paths[0] == "001.Bird_Species_001/Bird_Species_001_0001.jpg"
    assert all(images.absolute(i).is_file() for i in (0, 299, 599))
    assert images.labels.dtype == np.int64
    assert Counter(images.labels.tolist()) == {c: 3 for c in range(1, 201)}
    np.testing.assert_array_equal(images.classes, np.arange(1, 201))


def test_cub_split_classes(tmp_path: Path) -> None:
    cub = CUB200()
    images = cub.load(make_cub(tmp_path), strict_counts=False)
    train, test = images.subset(list(cub.train_classes)), images.subset(list(cub.test_classes))
    assert (len(train), len(test)) == (300, 300)
    np.testing.assert_array_equal(train.classes, np.arange(1, 101))
    np.testing.assert_array_equal(test.classes, np.arange(101, 201))


def test_cub_strict_counts_rejects_partial_image_list(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="expected 11788 images, found 600"):
        CUB200().load(make_cub(tmp_path))


@pytest.mark.parametrize("missing", ["images.txt", "image_class_labels.txt", "classes.txt"])
def test_cub_missing_metadata_file(tmp_path: Path, missing: str) -> None:
    root = make_cub(tmp_path, n_classes=4)
    (root / missing).unlink()
    with pytest.raises(DataError, match=missing.replace(".", r"\.")) as e:
        CUB200().load(root, strict_counts=False)
    assert "\n" not in str(e.value)


def test_cub_class_count_mismatch(tmp_path: Path) -> None:
    root = make_cub(tmp_path, n_classes=10)
    with pytest.raises(DataError, match="expected 200 classes, classes.txt lists 10 and images use 10"):
        CUB200().load(root)


def test_cub_unlabelled_image(tmp_path: Path) -> None:
    root = make_cub(tmp_path, n_classes=2)
    labels = root / "image_class_labels.txt"
    labels.write_text("".join(labels.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(DataError, match="image id 6 .* has no label"):
        CUB200().load(root, strict_counts=False)


def test_cub_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        CUB200().load(tmp_path / "nope")
    with pytest.raises(DataError, match="no images.txt"):
        CUB200().load(tmp_path)


# --- Cars --------------------------------------------------------------------------------------


def test_cars_annos_layout(tmp_path: Path) -> None:
    root = make_cars(tmp_path)
    images = Cars196().load(root, strict_counts=False)
    assert Cars196.layout(root) == "annos"
    assert len(images) == 392
    assert images.image_dir == root
    assert images.paths[:2] == ("car_ims/000001.jpg", "car_ims/000002.jpg")
    assert all(images.absolute(i).is_file() for i in range(len(images)))
    assert Counter(images.labels.tolist()) == {c: 2 for c in range(1, 197)}


def test_cars_devkit_layout(tmp_path: Path) -> None:
    root = make_cars(tmp_path, layout="devkit")
    images = Cars196().load(root, strict_counts=False)
    assert Cars196.layout(root) == "devkit"
    assert len(images) == 392
    assert images.paths[0] == "cars_train/00001.jpg"
    assert images.paths[196] == "cars_test/00001.jpg"  # train first, then test
    assert all(p.startswith("cars_train/") for p in images.paths[:196])
    assert all(images.absolute(i).is_file() for i in range(len(images)))


@pytest.mark.parametrize("test_annos_in_devkit", [False, True])
def test_cars_layouts_agree(tmp_path: Path, test_annos_in_devkit: bool) -> None:
    cars = Cars196()
    a = cars.load(make_cars(tmp_path / "a"), strict_counts=False)
    b = cars.load(
        make_cars(tmp_path / "b", layout="devkit", test_annos_in_devkit=test_annos_in_devkit),
        strict_counts=False,
    )
    assert Counter(a.labels.tolist()) == Counter(b.labels.tolist())
    np.testing.assert_array_equal(a.classes, b.classes)
    # Same image content for the same class in both layouts.
    i = a.paths.index("car_ims/000003.jpg")
    j = b.paths.index("cars_train/00002.jpg")
    assert a.labels[i] == b.labels[j] == 2
    assert a.absolute(i).read_bytes() == b.absolute(j).read_bytes()


def test_cars_split_classes(tmp_path: Path) -> None:
    cars = Cars196()
    images = cars.load(make_cars(tmp_path, layout="devkit"), strict_counts=False)
    train, test = images.subset(list(cars.train_classes)), images.subset(list(cars.test_classes))
    np.testing.assert_array_equal(train.classes, np.arange(1, 99))
    np.testing.assert_array_equal(test.classes, np.arange(99, 197))
    assert len(train) + len(test) == len(images)


def test_cars_subfolder_root(tmp_path: Path) -> None:
    root = make_cars(tmp_path / "stanford_cars", n_classes=3)
    assert Cars196().find_root(tmp_path) == root


@pytest.mark.parametrize("layout", ["annos", "devkit"])
def test_cars_class_count_mismatch(tmp_path: Path, layout: str) -> None:
    root = make_cars(tmp_path, layout=layout, n_classes=5)
    with pytest.raises(DataError, match="expected 196 classes, class_names lists 5 and images use 5"):
        Cars196().load(root)
    assert len(Cars196().load(root, strict_counts=False)) == 10


def test_cars_strict_counts_rejects_partial_image_list(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="expected 16185 images, found 392"):
        Cars196().load(make_cars(tmp_path))


def test_cars_missing_test_labels(tmp_path: Path) -> None:
    root = make_cars(tmp_path, layout="devkit", n_classes=3)
    (root / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(DataError, match="cars_test_annos_withlabels.mat .* download it from https://"):
        Cars196().load(root, strict_counts=False)


def test_cars_missing_meta(tmp_path: Path) -> None:
    root = make_cars(tmp_path, layout="devkit", n_classes=3)
    (root / "devkit" / "cars_meta.mat").unlink()
    with pytest.raises(DataError, match=r"missing metadata file .*cars_meta\.mat"):
        Cars196().load(root, strict_counts=False)


def test_cars_corrupt_mat(tmp_path: Path) -> None:
    root = make_cars(tmp_path, n_classes=3)
    (root / "cars_annos.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(DataError, match=r"cars_annos\.mat: cannot read it") as e:
        Cars196().load(root, strict_counts=False)
    assert "\n" not in str(e.value)


def test_cars_class_id_out_of_range(tmp_path: Path) -> None:
    import scipy.io

    root = make_cars(tmp_path, n_classes=3)
    mat = scipy.io.loadmat(root / "cars_annos.mat")
    mat["class_names"] = mat["class_names"][:, :2]
    scipy.io.savemat(root / "cars_annos.mat", {k: v for k, v in mat.items() if not k.startswith("__")})
    with pytest.raises(DataError, match="class id 3 outside 1..2"):
        Cars196().load(root, strict_counts=False)


def test_cars_wrong_annotation_file(tmp_path: Path) -> None:
    # The devkit's unlabeled cars_test_annos.mat put in place of the labelled one.
    root = make_cars(tmp_path, layout="devkit", n_classes=3)
    (root / "devkit" / "cars_test_annos.mat").replace(root / "cars_test_annos_withlabels.mat")
    with pytest.raises(DataError, match="lack field.* class"):
        Cars196().load(root, strict_counts=False)


def test_cars_single_image_per_file(tmp_path: Path) -> None:
    # squeeze_me turns a 1-element struct array into a 0-d array; the loader must still cope.
    images = Cars196().load(make_cars(tmp_path, layout="devkit", n_classes=1), strict_counts=False)
    assert images.paths == ("cars_train/00001.jpg", "cars_test/00001.jpg")
    assert images.labels.tolist() == [1, 1]


def test_cars_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        Cars196().load(tmp_path / "nope")
    with pytest.raises(DataError, match="neither cars_annos.mat nor devkit/cars_train_annos.mat"):
        Cars196().load(tmp_path)


def test_cars_archives() -> None:
    cars = Cars196()
    assert [a.filename for a in cars.archives] == ["car_ims.tgz", "cars_annos.mat"]
    assert not cars.archives[1].extract
    for archive in (*cars.archives, *cars.devkit_archives):
        assert len(archive.md5) == 32 and int(archive.md5, 16) >= 0


# --- registry ----------------------------------------------------------------------------------


def test_registry() -> None:
    assert set(DATASETS.names()) == {"cub", "cars", "sop", "inshop", "csv", "folder"}
    assert isinstance(get_dataset("cub"), CUB200)
    assert isinstance(get_dataset("cars"), Cars196)


def test_registry_unknown_name_lists_known() -> None:
    with pytest.raises(
        ConfigError, match="unknown dataset 'imagenet'; known datasets: cars, csv, cub, folder, inshop, sop"
    ):
        get_dataset("imagenet")


# --- the real CUB copy -------------------------------------------------------------------------


@pytest.mark.slow
def test_real_cub() -> None:
    if not REAL_CUB.exists():
        pytest.skip(f"real CUB copy not found at {REAL_CUB.resolve()}")
    cub = CUB200()
    images = cub.load(REAL_CUB)
    assert len(images) == 11788
    assert len(images.subset(list(cub.train_classes))) == 5864
    assert len(images.subset(list(cub.test_classes))) == 5924
    np.testing.assert_array_equal(images.classes, np.arange(1, 201))
    assert images.absolute(0).is_file() and images.absolute(len(images) - 1).is_file()


def test_content_key_tells_other_bytes_apart_and_shares_a_copy(tmp_path) -> None:
    """Same file list, different bytes: the caches must not be shared (the fingerprint is); the same
    bytes in another folder are the same dataset, and share its caches."""
    from fixtures import make_cub

    from harness.data import get_dataset
    from harness.data.digests import content_key

    cache = tmp_path / "cache"
    a = get_dataset("cub").load(make_cub(tmp_path / "a", n_classes=200, per_class=2), strict_counts=False)
    b = get_dataset("cub").load(
        make_cub(tmp_path / "b", n_classes=200, per_class=2, noise=80.0), strict_counts=False
    )
    assert a.fingerprint() == b.fingerprint()  # the file list and labels (older manifests)
    assert a.files_fingerprint() != b.files_fingerprint()  # other images under the same names and ids
    assert content_key(a, cache) != content_key(b, cache)
    again = get_dataset("cub").load(tmp_path / "a" / "CUB_200_2011", strict_counts=False)
    assert content_key(again, cache) == content_key(a, cache)
    shutil.copytree(tmp_path / "a", tmp_path / "c")  # the same files elsewhere: the same dataset...
    c = get_dataset("cub").load(tmp_path / "c" / "CUB_200_2011", strict_counts=False)
    assert c.files_fingerprint() == a.files_fingerprint()
    assert content_key(c, cache) == content_key(a, cache)  # ...and the same caches
    before = content_key(a, cache)
    first = a.image_dir / a.paths[0]
    first.write_bytes(first.read_bytes() + b"\0")  # a repaired / replaced image
    assert content_key(a, cache) != before
