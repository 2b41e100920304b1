"""DeepFashion In-Shop on a synthetic copy of its official layout: the partition's roles and its
query/gallery protocol, bad partition files refused in one line naming file:line, and the download
that cannot be automated saying where to get the files."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fixtures import make_inshop
from helpers import one_error_line

from harness.cli import main
from harness.data import DATASETS, get_dataset
from harness.data.inshop import PAGE, InShop
from harness.data.splits import dataset_classes, make_split
from harness.errors import DataError

TRAIN_ITEMS = list(range(1, 21, 2))  # the fixture's: odd item ids train, even ones test
TEST_ITEMS = list(range(2, 21, 2))
N_TRAIN, N_QUERY, N_GALLERY = 30, 15, 19  # its images: 2-4 per train item, 1-2 queries, 1-3 gallery


@pytest.fixture
def inshop(tmp_path: Path) -> Path:
    return make_inshop(tmp_path / "data")


def partition(root: Path) -> Path:
    return root / "Eval" / "list_eval_partition.txt"


def edit(path: Path, change: Callable[[list[str]], None]) -> None:
    lines = path.read_text().splitlines()
    change(lines)
    path.write_text("\n".join(lines) + "\n")


def set_status(line: int, status: str) -> Callable[[list[str]], None]:
    """Give row ``line`` (1-based, as the errors count) another evaluation status."""

    def change(lines: list[str]) -> None:
        lines[line - 1] = lines[line - 1].rsplit(maxsplit=1)[0] + " " + status

    return change


def refused(root: Path) -> str:
    """The one-line DataError a copy is refused with."""
    with pytest.raises(DataError) as e:
        InShop().load(root, strict_counts=False)
    assert "\n" not in str(e.value)
    return str(e.value)


# --- the fixture and the loader --------------------------------------------------------------------


def test_the_fixture_loads_in_the_official_layout(inshop: Path) -> None:
    images = InShop().load(inshop, strict_counts=False)
    assert images.image_dir == inshop
    assert images.paths[:2] == (
        "img/WOMEN/Blouses_Shirts/id_00000001/01_1_front.jpg",
        "img/WOMEN/Blouses_Shirts/id_00000001/01_2_side.jpg",
    )
    assert all(images.absolute(i).is_file() for i in range(len(images)))
    assert images.labels.dtype == np.int64
    assert sorted(set(images.labels.tolist())) == list(range(1, 21))  # id_00000001 -> 1
    assert images.roles is not None and images.query is not None and images.gallery is not None
    roles = images.roles
    assert set(images.labels[roles == "train"].tolist()) == set(TRAIN_ITEMS)
    assert set(images.labels[roles == "test"].tolist()) == set(TEST_ITEMS)
    assert set(roles.tolist()) == {"train", "test"}
    assert (int((roles == "train").sum()), int(images.query.sum()), int(images.gallery.sum())) == (
        N_TRAIN,
        N_QUERY,
        N_GALLERY,
    )
    assert not (images.query & images.gallery).any()
    assert not (images.query | images.gallery)[roles == "train"].any()
    assert (images.query | images.gallery)[roles == "test"].all()
    assert images.protocol == "query-gallery" and images.category is None
    per_item = Counter(images.labels[images.query].tolist())
    assert set(per_item.values()) == {1, 2}  # test items have one or two queries


def test_the_partition_beside_img_is_the_same_copy(tmp_path: Path) -> None:
    a = InShop().load(make_inshop(tmp_path / "a"), strict_counts=False)
    b_root = make_inshop(tmp_path / "b", partition_in_eval=False)
    assert (b_root / "list_eval_partition.txt").is_file() and not (b_root / "Eval").exists()
    b = InShop().load(b_root, strict_counts=False)
    assert a.fingerprint() == b.fingerprint()
    assert a.absolute(3).read_bytes() == b.absolute(3).read_bytes()  # seeded


def test_img_unpacked_under_Img_as_the_drive_folder_keeps_it(inshop: Path) -> None:
    (inshop / "Img").mkdir()
    (inshop / "img").rename(inshop / "Img" / "img")
    images = InShop().load(inshop, strict_counts=False)
    assert images.image_dir == inshop / "Img"
    assert all(images.absolute(i).is_file() for i in range(len(images)))


def test_the_folder_above_the_benchmark_is_accepted(tmp_path: Path) -> None:
    root = make_inshop(tmp_path / "In-shop Clothes Retrieval Benchmark", n_train=2, n_test=2)
    assert InShop().find_root(tmp_path) == root


def test_missing_root_and_missing_partition(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        InShop().load(tmp_path / "nope")
    with pytest.raises(DataError, match="no Eval/list_eval_partition.txt or list_eval_partition.txt under"):
        InShop().load(tmp_path)


def test_the_official_counts_refuse_a_subset(inshop: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError) as e:
        InShop().load(inshop)
    assert str(e.value) == (
        f"{inshop}: expected 7982 classes, list_eval_partition.txt lists 20 and images use 20;"
        " the copy is incomplete, re-extract the dataset"
    )
    monkeypatch.setattr(InShop, "num_classes", None)
    n = N_TRAIN + N_QUERY + N_GALLERY
    with pytest.raises(DataError, match=f"{partition(inshop)}: expected 52712 images, found {n}"):
        InShop().load(inshop)
    assert len(InShop().load(inshop, strict_counts=False)) == n


def test_the_official_protocol() -> None:
    spec = InShop()
    assert (spec.num_classes, spec.num_images) == (7982, 52712)
    assert spec.train_classes is None and spec.test_classes is None  # the partition gives the split


def test_the_split_is_the_partitions(inshop: Path) -> None:
    spec = get_dataset("inshop")
    images = spec.load(inshop, strict_counts=False)
    classes = dataset_classes(spec, images)
    assert (classes.how, classes.train, classes.test, classes.validation) == (
        "given",
        TRAIN_ITEMS,
        TEST_ITEMS,
        None,
    )
    split = make_split(images, classes.train, classes.test, val_fraction=0.2, seed=0)
    c = {k: set(v) for k, v in split.manifest["classes"].items()}
    assert c["train"] | c["val"] == set(TRAIN_ITEMS) and c["test"] == set(TEST_ITEMS)
    assert len(c["val"]) == 2
    assert not (c["train"] & c["val"] or c["train"] & c["test"] or c["val"] & c["test"])
    assert split.manifest["protocol"] == {"test": "query-gallery", "queries": N_QUERY, "gallery": N_GALLERY}
    query, gallery = split.test_masks()
    assert query is not None and gallery is not None
    assert (int(query.sum()), int(gallery.sum()), len(split.test)) == (
        N_QUERY,
        N_GALLERY,
        N_QUERY + N_GALLERY,
    )


# --- bad partition files: one line naming file:line --------------------------------------------------


def test_a_count_that_is_not_the_rows(inshop: Path) -> None:
    edit(partition(inshop), lambda lines: lines.__setitem__(0, "52712"))
    n = N_TRAIN + N_QUERY + N_GALLERY
    assert refused(inshop).startswith(
        f"{partition(inshop)}:1: the file says 52712 images but lists {n}; the file is truncated"
    )


def test_a_first_line_that_is_no_count(inshop: Path) -> None:
    edit(partition(inshop), lambda lines: lines.pop(0))
    assert refused(inshop).startswith(
        f"{partition(inshop)}:1: expected the image count, got 'image_name item_id evaluation_status'"
    )


def test_a_missing_header(inshop: Path) -> None:
    edit(partition(inshop), lambda lines: lines.pop(1))
    msg = refused(inshop)
    assert msg.startswith(
        f"{partition(inshop)}:2: expected the header 'image_name item_id evaluation_status'"
    )
    assert "got 'img/WOMEN/Blouses_Shirts/id_00000001/01_1_front.jpg id_00000001 train'" in msg


def test_an_unknown_status(inshop: Path) -> None:
    edit(partition(inshop), set_status(4, "validation"))
    assert refused(inshop).startswith(
        f"{partition(inshop)}:4: unknown evaluation status 'validation' (train, query or gallery)"
    )


@pytest.mark.parametrize("item", ["00000001", "id_1a", "item_00000001", "id_"])
def test_a_bad_item_id(inshop: Path, item: str) -> None:
    def change(lines: list[str]) -> None:
        path, _, status = lines[3].split()
        lines[3] = f"{path} {item} {status}"

    edit(partition(inshop), change)
    assert refused(inshop).startswith(f"{partition(inshop)}:4: {item!r} is not an item id (like id_00000001)")


@pytest.mark.parametrize("row", ["img/a.jpg id_00000001", "img/a.jpg id_00000001 train extra"])
def test_a_row_without_three_fields(inshop: Path, row: str) -> None:
    edit(partition(inshop), lambda lines: lines.__setitem__(4, row))
    got = len(row.split())
    assert refused(inshop).startswith(f"{partition(inshop)}:5: expected 3 fields, got {got}")


def test_a_duplicate_path(inshop: Path) -> None:
    def change(lines: list[str]) -> None:
        lines[3] = lines[2]  # line 4 repeats line 3

    edit(partition(inshop), change)
    assert refused(inshop).startswith(
        f"{partition(inshop)}:4: img/WOMEN/Blouses_Shirts/id_00000001/01_1_front.jpg is listed twice"
        " (first on line 3)"
    )


def test_a_train_item_with_a_query(inshop: Path) -> None:
    edit(partition(inshop), set_status(5, "query"))  # item 1: lines 3-5 train
    assert refused(inshop).startswith(
        f"{partition(inshop)}:5: item id_00000001 is a query item here but a train item on line 3;"
        " train and test items must not overlap"
    )


def test_a_test_item_with_a_train_image(inshop: Path) -> None:
    edit(partition(inshop), set_status(7, "train"))  # item 2: line 6 query, line 7 gallery
    assert refused(inshop).startswith(
        f"{partition(inshop)}:7: item id_00000002 is a train item here but a query item on line 6"
    )


def test_a_query_item_without_gallery(inshop: Path) -> None:
    edit(partition(inshop), set_status(7, "query"))  # item 2's one gallery image becomes a query
    assert refused(inshop).startswith(
        f"{partition(inshop)}:6: query item id_00000002 has no gallery image, so it cannot be scored"
    )


def test_a_file_with_no_rows_at_all(inshop: Path) -> None:
    partition(inshop).write_text("52712\n")
    assert refused(inshop).startswith(
        f"{partition(inshop)}: expected the image count, the header and the images, found 1 line;"
    )


# --- registry, download --------------------------------------------------------------------------


def test_the_registry_builds_it() -> None:
    assert "inshop" in DATASETS.names()
    assert isinstance(get_dataset("inshop"), InShop)


def test_there_is_no_archive_to_checksum() -> None:
    assert InShop.archives == ()  # no plain URL or published checksum exists


def test_download_says_where_to_get_the_files(tmp_path: Path) -> None:
    dest = tmp_path / "inshop"
    with pytest.raises(DataError) as e:
        InShop().download(dest)
    msg = str(e.value)
    assert "\n" not in msg
    assert PAGE == "http://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html" and PAGE in msg
    assert "Img/img.zip and Eval/list_eval_partition.txt" in msg
    assert f"unzip img.zip in {dest} (giving {dest / 'img'}/)" in msg
    assert f"put list_eval_partition.txt in {dest / 'Eval'}/" in msg
    assert not dest.exists()  # nothing fetched, nothing written


def test_download_of_a_copy_already_there_returns_it(inshop: Path) -> None:
    assert InShop().download(inshop) == inshop


# --- the CLI ----------------------------------------------------------------------------------------


def test_cli_verify_of_a_partial_copy(inshop: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "verify", "--dataset", "inshop", "--root", str(inshop), "--partial"]) == 0
    out = capsys.readouterr().out.strip()
    n = N_TRAIN + N_QUERY + N_GALLERY
    assert out.startswith(f"inshop: {inshop}: {n} images, 20 classes, {N_TRAIN} in train classes,"), out
    assert out.endswith(": OK") and "\n" not in out, out


def test_cli_verify_without_partial_names_the_counts(
    inshop: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["data", "verify", "--dataset", "inshop", "--root", str(inshop)])
    assert "expected 7982 classes" in one_error_line(code, capsys.readouterr().err)
