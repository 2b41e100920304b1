"""Stanford Online Products on a synthetic copy of its official layout: loading, the official class
ranges, bad list files refused in one line naming file:line, the .zip download path (no network)."""

from __future__ import annotations

import hashlib
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fixtures import make_sop
from helpers import one_error_line
from PIL import Image

from harness.cli import main
from harness.data import DATASETS, get_dataset
from harness.data.download import Archive, download_and_extract, extract_zip
from harness.data.sop import CATEGORIES, StanfordOnlineProducts
from harness.data.splits import dataset_classes, make_split
from harness.errors import DataError

TRAIN, TEST = "Ebay_train.txt", "Ebay_test.txt"


@pytest.fixture
def sop(tmp_path: Path) -> Path:
    return make_sop(tmp_path / "data")


def edit(path: Path, change: Callable[[list[str]], None]) -> None:
    lines = path.read_text().splitlines()
    change(lines)
    path.write_text("\n".join(lines) + "\n")


def refused(root: Path) -> str:
    """The one-line DataError a copy is refused with."""
    with pytest.raises(DataError) as e:
        StanfordOnlineProducts().load(root, strict_counts=False)
    assert "\n" not in str(e.value)
    return str(e.value)


# --- the fixture and the loader --------------------------------------------------------------------


def test_the_fixture_loads_in_the_official_layout(sop: Path, tmp_path: Path) -> None:
    images = StanfordOnlineProducts().load(tmp_path / "data", strict_counts=False)  # the folder above
    assert images.image_dir == sop and sop.name == "Stanford_Online_Products"
    assert images.paths[:2] == ("bicycle_final/110000000001_0.JPG", "bicycle_final/110000000001_1.JPG")
    assert all(images.absolute(i).is_file() for i in range(len(images)))
    assert images.labels.dtype == np.int64
    counts = Counter(images.labels.tolist())
    assert sorted(counts) == [*range(1, 13), *range(11319, 11331)]
    assert set(counts.values()) == {2, 3, 4}  # uneven classes, as the real ones are
    # train file first, then test; category = super_class_id, the folder's category
    assert images.labels[: sum(counts[c] for c in range(1, 13))].max() == 12
    assert images.category is not None
    for path, category in zip(images.paths, images.category.tolist()):
        assert path.split("/")[0] == f"{CATEGORIES[category - 1]}_final"
    assert set(images.category.tolist()) == {1, 3, 7, 8}  # bicycle, chair, lamp, mug
    assert images.roles is None and images.query is None and images.protocol == "leave-one-out"
    # the fixture's list files are the official format: Ebay_info.txt lists both
    info = (sop / "Ebay_info.txt").read_text().splitlines()
    assert info[0] == "image_id class_id super_class_id path" and len(info) == len(images) + 1


def test_the_fixture_is_class_dependent_and_seeded(tmp_path: Path) -> None:
    a = StanfordOnlineProducts().load(make_sop(tmp_path / "a"), strict_counts=False)
    b = make_sop(tmp_path / "b")
    assert a.absolute(5).read_bytes() == (b / a.paths[5]).read_bytes()
    means: dict[int, list[np.ndarray]] = {}
    for i in range(len(a)):
        arr = np.asarray(Image.open(a.absolute(i)), dtype=np.float32)
        assert arr.shape == (32, 40, 3)
        means.setdefault(int(a.labels[i]), []).append(arr.reshape(-1, 3).mean(0))
    within = np.mean([np.abs(v[0] - v[1]).max() for v in means.values()])
    firsts = [v[0] for v in means.values()]
    between = np.mean([np.abs(x - y).max() for x, y in zip(firsts, firsts[1:])])
    assert within < 5 < between


def test_the_official_counts_refuse_a_subset(sop: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError) as e:
        StanfordOnlineProducts().load(sop)
    msg = str(e.value)
    assert msg == (
        f"{sop}: expected 22634 classes, Ebay_train.txt + Ebay_test.txt lists 24 and images use 24;"
        " the copy is incomplete, re-extract the dataset"
    )
    monkeypatch.setattr(StanfordOnlineProducts, "num_classes", None)
    with pytest.raises(DataError, match=f"{sop / TRAIN}: expected 120053 images, found 72"):
        StanfordOnlineProducts().load(sop)
    assert len(StanfordOnlineProducts().load(sop, strict_counts=False)) == 72


def test_the_official_protocol() -> None:
    spec = StanfordOnlineProducts()
    assert (spec.num_classes, spec.num_images) == (22634, 120053)
    assert spec.train_classes == range(1, 11319) and spec.test_classes == range(11319, 22635)
    assert len(spec.train_classes) + len(spec.test_classes) == spec.num_classes


def test_the_split_is_the_official_class_ranges(sop: Path) -> None:
    spec = get_dataset("sop")
    images = spec.load(sop, strict_counts=False)
    classes = dataset_classes(spec, images)
    assert classes.how == "official" and classes.validation is None
    split = make_split(images, classes.train, classes.test, val_fraction=0.25, seed=0)
    c = {k: set(v) for k, v in split.manifest["classes"].items()}
    assert c["test"] == set(range(11319, 11331))
    assert c["train"] | c["val"] == set(range(1, 13)) and len(c["val"]) == 3
    assert not (c["train"] & c["val"] or c["train"] & c["test"] or c["val"] & c["test"])
    assert "protocol" not in split.manifest and split.test_masks() == (None, None)
    assert len(split.train) + len(split.val) + len(split.test) == len(images)


def test_missing_root_and_missing_list(sop: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        StanfordOnlineProducts().load(tmp_path / "nope")
    with pytest.raises(DataError, match="no Ebay_train.txt under"):
        StanfordOnlineProducts().load(tmp_path)
    (sop / TEST).unlink()
    assert refused(sop).startswith(f"missing metadata file {sop / TEST}")


# --- bad list files: one line naming file:line ------------------------------------------------------


def test_a_missing_header(sop: Path) -> None:
    edit(sop / TRAIN, lambda lines: lines.pop(0))
    msg = refused(sop)
    assert msg.startswith(f"{sop / TRAIN}:1: expected the header 'image_id class_id super_class_id path'")
    assert "got '1 1 1 bicycle_final/110000000001_0.JPG'" in msg


def test_a_short_header(sop: Path) -> None:
    edit(sop / TEST, lambda lines: lines.__setitem__(0, " class_id super_class_id path"))
    assert refused(sop).startswith(f"{sop / TEST}:1: expected the header")


@pytest.mark.parametrize("row, got", [("4 2 1", 3), ("4 2 1 bicycle_final/x.JPG extra", 5)])
def test_a_row_without_four_fields(sop: Path, row: str, got: int) -> None:
    edit(sop / TRAIN, lambda lines: lines.__setitem__(4, row))
    assert refused(sop).startswith(f"{sop / TRAIN}:5: expected 4 fields, got {got}")


@pytest.mark.parametrize("column", [0, 1, 2])
def test_a_non_integer_id(sop: Path, column: int) -> None:
    def change(lines: list[str]) -> None:
        parts = lines[3].split()
        parts[column] = "x7"
        lines[3] = " ".join(parts)

    edit(sop / TRAIN, change)
    assert refused(sop).startswith(f"{sop / TRAIN}:4: 'x7' is not an id")


def test_a_duplicate_image_id(sop: Path) -> None:
    def change(lines: list[str]) -> None:
        lines[3] = "2 " + lines[3].split(maxsplit=1)[1]

    edit(sop / TEST, change)
    assert refused(sop).startswith(f"{sop / TEST}:4: image id 2 is listed twice (first on line 3)")


def test_a_duplicate_path_within_a_file(sop: Path) -> None:
    def change(lines: list[str]) -> None:
        lines[2] = lines[2].rsplit(maxsplit=1)[0] + " " + lines[1].split()[3]

    edit(sop / TRAIN, change)
    msg = refused(sop)
    assert msg.startswith(f"{sop / TRAIN}:3: bicycle_final/110000000001_0.JPG is listed twice")
    assert f"(first at {TRAIN}:2)" in msg


def test_a_train_image_listed_again_as_a_test_image(sop: Path) -> None:
    first_train = (sop / TRAIN).read_text().splitlines()[1].split()[3]

    def change(lines: list[str]) -> None:
        lines[1] = lines[1].rsplit(maxsplit=1)[0] + " " + first_train

    edit(sop / TEST, change)
    assert refused(sop).startswith(f"{sop / TEST}:2: {first_train} is listed twice (first at {TRAIN}:2)")


def test_a_test_class_in_the_train_file(sop: Path) -> None:
    edit(sop / TRAIN, lambda lines: lines.__setitem__(2, "2 11320 1 bicycle_final/110000000001_1.JPG"))
    assert refused(sop).startswith(
        f"{sop / TRAIN}:3: class 11320 is a test class (the official test classes are 11319-22634),"
        f" but {TRAIN} lists it"
    )


def test_a_train_class_in_the_test_file(tmp_path: Path) -> None:
    root = make_sop(tmp_path, n_classes=8, first_test_class=5)  # test ids right after the train ids
    assert refused(root).startswith(
        f"{root / TEST}:2: class 5 is a train class (the official train classes are 1-11318),"
        f" but {TEST} lists it"
    )


def test_a_class_outside_the_official_ranges(sop: Path) -> None:
    edit(sop / TEST, lambda lines: lines.__setitem__(1, "1 22635 1 bicycle_final/110000011319_0.JPG"))
    assert refused(sop).startswith(f"{sop / TEST}:2: class 22635 is outside the official classes 1-22634")


def test_a_super_class_outside_the_twelve(sop: Path) -> None:
    edit(sop / TRAIN, lambda lines: lines.__setitem__(1, "1 1 13 bicycle_final/110000000001_0.JPG"))
    assert refused(sop).startswith(f"{sop / TRAIN}:2: super_class_id 13 outside 1..12")


# --- registry, archives, download ----------------------------------------------------------------


def test_the_registry_builds_it() -> None:
    assert "sop" in DATASETS.names()
    assert isinstance(get_dataset("sop"), StanfordOnlineProducts)


def test_the_archive_is_the_official_zip_with_its_published_md5() -> None:
    (archive,) = StanfordOnlineProducts.archives
    assert archive.filename == "Stanford_Online_Products.zip" and archive.extract
    assert archive.url.endswith("/cs/cvgl/Stanford_Online_Products.zip")
    assert len(archive.md5) == 32 and int(archive.md5, 16) >= 0


def _zip_of(folder: Path, to: Path, extra: dict[str, bytes] | None = None) -> str:
    with zipfile.ZipFile(to, "w") as zf:
        for p in sorted(folder.rglob("*")):
            zf.write(p, p.relative_to(folder.parent).as_posix())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return hashlib.md5(to.read_bytes()).hexdigest()


def test_download_unzips_the_archive_into_a_loadable_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_sop(tmp_path / "src", n_classes=4)
    zipped = tmp_path / "Stanford_Online_Products.zip"
    md5 = _zip_of(src, zipped)
    archive = Archive(zipped.as_uri(), "Stanford_Online_Products.zip", md5)
    monkeypatch.setattr(StanfordOnlineProducts, "archives", (archive,))
    root = StanfordOnlineProducts().download(tmp_path / "dest")
    assert root == tmp_path / "dest" / "Stanford_Online_Products"
    images = StanfordOnlineProducts().load(root, strict_counts=False)
    assert len(images) == len(StanfordOnlineProducts().load(src, strict_counts=False))
    assert images.absolute(0).read_bytes() == (src / images.paths[0]).read_bytes()


@pytest.mark.parametrize("name", ["../escaped.txt", "/tmp/absolute-escape.txt", "a/../../escaped.txt"])
def test_a_zip_member_outside_the_destination_is_refused(tmp_path: Path, name: str) -> None:
    src = make_sop(tmp_path / "src", n_classes=2, per_class=1)
    zipped = tmp_path / "bad.zip"
    _zip_of(src, zipped, {name: b"x"})
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(DataError) as e:
        extract_zip(zipped, dest)
    assert f"member {name!r} would be written outside {dest}" in str(e.value)
    assert "\n" not in str(e.value)
    assert list(dest.iterdir()) == []  # refused whole: nothing written, inside or out
    assert not (tmp_path / "escaped.txt").exists()


def test_a_corrupt_zip_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "Stanford_Online_Products.zip"
    bad.write_bytes(b"PK\x03\x04 but not a zip")
    md5 = hashlib.md5(bad.read_bytes()).hexdigest()
    with pytest.raises(DataError, match=r"not a readable \.zip .*download again"):
        download_and_extract(Archive(bad.as_uri(), "Stanford_Online_Products.zip", md5), tmp_path / "dest")


# --- the CLI ----------------------------------------------------------------------------------------


def test_cli_verify_of_a_partial_copy(sop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "verify", "--dataset", "sop", "--root", str(sop), "--partial"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"sop: {sop}: 72 images, 24 classes, 36 in train classes, 36 in test classes")
    assert out.endswith(": OK") and "\n" not in out, out


def test_cli_verify_without_partial_names_the_counts(sop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["data", "verify", "--dataset", "sop", "--root", str(sop)])
    assert "expected 22634 classes" in one_error_line(code, capsys.readouterr().err)
