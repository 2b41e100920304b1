"""Datasets of the user's own: an image list (``dataset: csv``, CSV or parquet) and a folder per
class (``dataset: folder``), their splits and protocols, and every bad input refused in one line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures import make_cub

from harness.cli import main
from harness.data import get_dataset
from harness.data.base import LEAVE_ONE_OUT, QUERY_GALLERY
from harness.data.splits import dataset_classes, make_split
from harness.errors import ConfigError, DataError
from harness.study import parse_config

N_CLASSES = 12


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cub(tmp_path_factory.mktemp("data"), n_classes=N_CLASSES, per_class=3)


@pytest.fixture
def listed(cub_root: Path) -> pd.DataFrame:
    """The tiny CUB as an image list: paths relative to the CUB folder, labels its class ids."""
    cub = get_dataset("cub").load(cub_root, strict_counts=False)
    return pd.DataFrame({"path": [f"images/{p}" for p in cub.paths], "label": cub.labels})


def write(frame: pd.DataFrame, cub_root: Path, name: str = "list.csv") -> Path:
    """Beside the images (paths are relative to the file); removed by the caller's tmp folder."""
    path = cub_root / name
    if name.endswith(".parquet"):
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return path


def load(path: Path):  # noqa: ANN201
    return get_dataset("csv").load(path)


def one_line(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    code = main(["data", "verify", "--dataset", "csv", "--root", str(path), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# --- the list and its splits ----------------------------------------------------------------------


def test_a_list_with_the_official_split_gives_the_cub_split(listed: pd.DataFrame, cub_root: Path) -> None:
    listed["split"] = np.where(listed["label"] <= N_CLASSES // 2, "train", "test")
    images = load(write(listed, cub_root))
    classes = dataset_classes(get_dataset("csv"), images)
    assert classes.how == "given" and classes.validation is None
    assert classes.train == list(range(1, N_CLASSES // 2 + 1))
    cub = get_dataset("cub").load(cub_root, strict_counts=False)
    ours = make_split(images, classes.train, classes.test, 0.34, seed=3)
    theirs = make_split(cub, range(1, N_CLASSES // 2 + 1), range(N_CLASSES // 2 + 1, 13), 0.34, seed=3)
    assert ours.manifest["classes"] == theirs.manifest["classes"]
    assert ours.manifest["hash"] == theirs.manifest["hash"]
    assert np.array_equal(ours.test, theirs.test) and np.array_equal(ours.train, theirs.train)
    assert images.protocol == LEAVE_ONE_OUT and "protocol" not in ours.manifest


def test_without_a_split_the_test_classes_are_drawn_by_split_seed_alone(
    listed: pd.DataFrame, cub_root: Path
) -> None:
    images = load(write(listed, cub_root))
    spec = get_dataset("csv")
    a, b = dataset_classes(spec, images, 0.25, 0), dataset_classes(spec, images, 0.25, 0)
    c = dataset_classes(spec, images, 0.25, 1)
    assert a == b and a.how == "seeded" and len(a.test) == 3 and a.test != c.test
    assert not set(a.train) & set(a.test) and sorted(a.train + a.test) == list(range(1, N_CLASSES + 1))
    # the study seed draws the validation classes, never the test classes
    s0 = make_split(images, a.train, a.test, seed=0, classes_split=a.how)
    s1 = make_split(images, a.train, a.test, seed=1, classes_split=a.how)
    assert s0.manifest["classes"]["test"] == s1.manifest["classes"]["test"] == a.test
    assert s0.manifest["classes"]["val"] != s1.manifest["classes"]["val"]
    assert s0.manifest["classes_split"] == "seeded"


def test_a_given_validation_split_is_used_instead_of_a_carve_out(
    listed: pd.DataFrame, cub_root: Path
) -> None:
    listed["split"] = np.select(
        [listed["label"] <= 5, listed["label"] <= 7], ["train", "validation"], default="test"
    )
    images = load(write(listed, cub_root))
    classes = dataset_classes(get_dataset("csv"), images)
    assert classes.validation == [6, 7]
    split = make_split(images, classes.train, classes.test, val_classes=classes.validation)
    assert split.manifest["classes"] == {"train": [1, 2, 3, 4, 5], "val": [6, 7], "test": [8, 9, 10, 11, 12]}
    assert split.manifest["validation"] == "given" and split.manifest["val_fraction"] is None
    with pytest.raises(ConfigError, match="val_folds 2"):
        make_split(images, classes.train, classes.test, val_folds=2, val_classes=classes.validation)


def test_query_and_gallery_flags_make_a_query_gallery_protocol(listed: pd.DataFrame, cub_root: Path) -> None:
    listed["split"] = np.where(listed["label"] <= 6, "train", "test")
    first = ~listed.duplicated("label")
    listed["is_query"] = np.where(first, "true", "false")  # one query per class
    listed["is_gallery"] = np.where(first, "no", "yes")  # the others its gallery
    images = load(write(listed, cub_root))
    assert images.protocol == QUERY_GALLERY
    classes = dataset_classes(get_dataset("csv"), images)
    split = make_split(images, classes.train, classes.test)
    assert split.manifest["protocol"] == {"test": QUERY_GALLERY, "queries": 6, "gallery": 12}
    query, gallery = split.test_masks()
    assert query is not None and gallery is not None
    assert query.sum() == 6 and gallery.sum() == 12 and not (query & gallery).any()


def test_one_flag_column_makes_every_test_image_the_other(listed: pd.DataFrame, cub_root: Path) -> None:
    listed["split"] = np.where(listed["label"] <= 6, "train", "test")
    listed["is_query"] = np.where(~listed.duplicated("label"), 1, 0)
    images = load(write(listed, cub_root))
    assert images.gallery is not None and images.gallery.all()
    split = make_split(images, *(lambda c: (c.train, c.test))(dataset_classes(get_dataset("csv"), images)))
    assert split.manifest["protocol"] == {"test": QUERY_GALLERY, "queries": 6, "gallery": 18}


def test_parquet_names_and_categories_load_like_csv(listed: pd.DataFrame, cub_root: Path) -> None:
    listed["label"] = [f"bird {y:02d}" for y in listed["label"]]  # names: ids in sorted order
    listed["category"] = ["sea" if i % 2 else "land" for i in range(len(listed))]
    images = get_dataset("csv").load(write(listed, cub_root, "list.parquet"))
    assert images.classes.tolist() == list(range(1, N_CLASSES + 1))
    assert images.labels[0] == 1 and images.labels[-1] == N_CLASSES
    assert images.category is not None and set(images.category.tolist()) == {1, 2}


def test_a_folder_holding_one_list_is_taken_as_the_list(listed: pd.DataFrame, tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    with pytest.raises(DataError, match="set data_root to the CSV or parquet file"):
        get_dataset("csv").find_root(root)
    (root / "list.csv").write_text("path,label\n")
    assert get_dataset("csv").find_root(root) == root / "list.csv"


def test_the_fingerprint_sees_the_flags(listed: pd.DataFrame, cub_root: Path) -> None:
    listed["split"] = np.where(listed["label"] <= 6, "train", "test")
    plain = load(write(listed, cub_root)).fingerprint()
    listed["is_query"] = np.where(~listed.duplicated("label"), 1, 0)
    assert load(write(listed, cub_root)).fingerprint() != plain


# --- bad input: one line, file and line ----------------------------------------------------------


def test_verify_prints_the_split_and_the_protocol(
    listed: pd.DataFrame, cub_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listed["split"] = np.where(listed["label"] <= 6, "train", "test")
    listed["is_query"] = np.where(~listed.duplicated("label"), 1, 0)
    path = write(listed, cub_root)
    assert main(["data", "verify", "--dataset", "csv", "--root", str(path)]) == 0
    out = capsys.readouterr().out
    assert "36 images, 12 classes, 18 in train classes, 18 in test classes" in out
    assert "(given split, query-gallery, 6 queries against 18 gallery images): OK" in out


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda f: f.drop(columns="label"), "list.csv: no 'label' column (it has path)"),
        (
            lambda f: f.assign(split=["train"] * 3 + ["tset"] + ["test"] * (len(f) - 4)),
            "list.csv:5: split 'tset' is not one of train, validation, test",
        ),
        (
            lambda f: f.assign(path=[*f["path"][:6], "images/nowhere.jpg", *f["path"][7:]]),
            "list.csv:8: image",
        ),
        (lambda f: f.assign(path=[*f["path"][:6], f["path"][0], *f["path"][7:]]), "list.csv:8: images/001"),
        (lambda f: f.iloc[2:], "list.csv:2: class 1 has this one image"),
        (
            lambda f: f.assign(split=["test"] + ["train"] * (len(f) - 1)),
            "list.csv:3: class 1 is in split 'train' here and in 'test' at",
        ),
        (
            lambda f: f.assign(is_query=["maybe"] + [0] * (len(f) - 1)),
            "list.csv:2: is_query 'maybe' is not true or false",
        ),
        (lambda f: f.assign(label=[""] + list(f["label"][1:])), "list.csv:2: empty label"),
    ],
    ids=[
        "no-label",
        "split-value",
        "missing-file",
        "duplicate",
        "singleton",
        "shared-class",
        "flag",
        "empty-label",
    ],
)
def test_a_bad_list_is_refused_in_one_line_naming_the_row(
    listed: pd.DataFrame,
    cub_root: Path,
    capsys: pytest.CaptureFixture[str],
    change,
    expected: str,  # noqa: ANN001
) -> None:
    path = write(change(listed.copy()), cub_root)
    msg = one_line(path, capsys)
    assert expected in msg, msg


def test_a_query_without_gallery_images_of_its_class_is_refused(
    listed: pd.DataFrame, cub_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listed["split"] = np.where(listed["label"] <= 6, "train", "test")
    listed["is_query"] = np.where(listed["label"] == 9, 1, 0)
    listed["is_gallery"] = np.where(listed["label"] == 9, 0, 1)  # class 9: queries only
    msg = one_line(write(listed, cub_root), capsys)
    assert "list.csv:26: query of class 9 has no gallery image of its class" in msg
    listed["is_gallery"] = 0
    assert "no test image is in the gallery" in one_line(write(listed, cub_root), capsys)


def test_a_query_without_gallery_in_a_drawn_split_is_refused_naming_the_image(
    listed: pd.DataFrame, cub_root: Path
) -> None:
    spec = get_dataset("csv")
    drawn = dataset_classes(spec, load(write(listed, cub_root)), 0.5, 0).test[0]  # the flags do not move it
    listed["is_query"] = 1
    listed["is_gallery"] = np.where(listed["label"] == drawn, 0, 1)  # a test class without gallery
    images = load(write(listed, cub_root))
    classes = dataset_classes(spec, images, 0.5, 0)
    assert classes.test[0] == drawn
    with pytest.raises(
        DataError, match=rf"query images/{drawn:03d}\..* \(class {drawn}\) has no gallery image"
    ):
        make_split(images, classes.train, classes.test)


def test_a_bad_list_writes_nothing(listed: pd.DataFrame, cub_root: Path, tmp_path: Path) -> None:
    path = write(listed.iloc[2:], cub_root)  # class 1 has one image
    results = tmp_path / "results"
    cfg = parse_config(
        {
            "name": "own",
            "dataset": "csv",
            "data_root": str(path),
            "results_dir": str(results),
            "backbone": "test_efficientnet",
            "pretrained": False,
            "image_size": 32,
            "budget": {"n_trials": 1},
        }
    )
    from harness.study.data import prepare

    with pytest.raises(DataError, match="class 1 has this one image"):
        prepare(cfg)
    assert not results.exists() or not any(results.rglob("*.json"))


# --- a folder per class ---------------------------------------------------------------------------


@pytest.fixture
def folder(cub_root: Path) -> Path:
    return cub_root / "images"


def test_a_folder_per_class_with_a_drawn_split(folder: Path) -> None:
    images = get_dataset("folder").load(folder)
    assert len(images) == 3 * N_CLASSES and images.classes.tolist() == list(range(1, N_CLASSES + 1))
    assert images.paths[0].startswith("001.") and images.roles is None
    classes = dataset_classes(get_dataset("folder"), images, 0.5, 0)
    assert classes.how == "seeded" and len(classes.test) == N_CLASSES // 2


def test_a_split_file_gives_each_class_folder_its_split(folder: Path, tmp_path: Path) -> None:
    names = sorted(p.name for p in folder.iterdir())
    split = tmp_path / "split.txt"
    split.write_text(
        "# class split\n"
        + "".join(
            f"{n} {'train' if i < 6 else 'validation' if i < 8 else 'test'}\n" for i, n in enumerate(names)
        )
    )
    images = get_dataset("folder", split_file=str(split)).load(folder)
    classes = dataset_classes(get_dataset("folder"), images)
    assert classes.how == "given" and classes.validation == [7, 8] and classes.test == [9, 10, 11, 12]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nobody train\n", "split.txt:1: no class folder 'nobody'"),
        ("{0} tran\n", "split.txt:1: expected '<class folder> <train|validation|test>'"),
        ("{0} train\n{0} test\n", "split.txt:2: class '{0}' is listed twice"),
        ("{0} train\n", "split.txt: class folder '{1}' (and 10 more) has no line"),
    ],
    ids=["unknown-class", "bad-split", "twice", "missing"],
)
def test_a_bad_split_file_is_refused_naming_the_line(
    folder: Path, tmp_path: Path, text: str, expected: str
) -> None:
    names = sorted(p.name for p in folder.iterdir())
    split = tmp_path / "split.txt"
    split.write_text(text.format(*names))
    with pytest.raises(DataError) as e:
        get_dataset("folder", split_file=str(split)).load(folder)
    assert expected.format(*names) in str(e.value)


def test_a_folder_skips_other_files_and_reads_subfolders(tmp_path: Path, folder: Path) -> None:
    import shutil

    root = tmp_path / "classes"
    shutil.copytree(folder, root)
    first = sorted(root.iterdir())[0]
    (first / "notes.txt").write_text("not an image")
    (first / "more").mkdir()
    shutil.copy(next(first.glob("*.jpg")), first / "more" / "copy.JPG")
    images = get_dataset("folder").load(root)
    assert len(images) == 3 * N_CLASSES + 1 and f"{first.name}/more/copy.JPG" in images.paths
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no images"):
        get_dataset("folder").load(root)


def test_split_file_belongs_to_folder_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="split_file applies to dataset: folder, not cub"):
        parse_config({"name": "x", "dataset": "cub", "split_file": "s.txt", "budget": {"n_trials": 1}})
    with pytest.raises(ConfigError, match="split_file applies to dataset: folder, not csv"):
        get_dataset("csv", split_file="s.txt")


def test_verify_a_folder_from_the_command_line(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["data", "verify", "--dataset", "folder", "--root", str(folder), "--test-fraction", "0.25"]) == 0
    )
    assert (
        "36 images, 12 classes, 27 in train classes, 9 in test classes (seeded split"
        in capsys.readouterr().out
    )


@pytest.mark.parametrize(
    ("dataset", "hint"),
    [
        ("csv", "the CSV or parquet file that lists the images"),
        ("folder", "the folder holding one folder per class"),
        ("inshop", "the folder holding img/ and Eval/list_eval_partition.txt"),
    ],
)
def test_a_dataset_without_a_download_asks_for_data_root(tmp_path: Path, dataset: str, hint: str) -> None:
    from harness.study.data import resolve_root

    cfg = parse_config(
        {"name": "x", "dataset": dataset, "results_dir": str(tmp_path / "r"), "budget": {"n_trials": 1}}
    )
    with pytest.raises(DataError, match=f"dataset '{dataset}' needs data_root: set it to {hint}"):
        resolve_root(cfg)


def test_a_parquet_list_without_pyarrow_names_the_extra(
    listed: pd.DataFrame, cub_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    path = write(listed, cub_root, "list.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    with pytest.raises(
        DataError, match=r"reading parquet needs pyarrow: pip install 'triplet-harness\[parquet\]'"
    ):
        load(path)


# --- splits that share classes: the user's opt-out (class_disjoint: false) -----------------------


@pytest.fixture
def shared(tmp_path: Path) -> tuple[pd.DataFrame, Path]:
    """8 classes of 4 images: classes 1-4 have two train and two test images (seen-class retrieval),
    classes 5-8 are train only."""
    root = make_cub(tmp_path / "four", n_classes=8, per_class=4)
    cub = get_dataset("cub").load(root, strict_counts=False)
    frame = pd.DataFrame({"path": [f"images/{p}" for p in cub.paths], "label": cub.labels})
    nth = frame.groupby("label").cumcount()
    frame["split"] = np.where((nth >= 2) & (frame["label"] <= 4), "test", "train")
    return frame, root


def test_shared_classes_are_refused_unless_the_user_opts_out(
    shared: tuple[pd.DataFrame, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from harness.data.splits import check_manifest, split_by_roles

    frame, root = shared
    path = write(frame, root)
    msg = one_line(path, capsys)
    assert "list.csv:4: class 1 is in split 'test' here and in 'train' at" in msg
    assert msg.endswith("or set class_disjoint: false")
    spec = get_dataset("csv", class_disjoint=False)
    images = spec.load(path)
    classes = dataset_classes(spec, images)
    assert not classes.disjoint and classes.test == [1, 2, 3, 4]
    split = split_by_roles(images, val_fraction=0.25, seed=0)
    m = split.manifest
    assert m["class_disjoint"] is False and m["validation"] == "carved" and m["num_classes"]["val"] == 2
    assert set(split.train) | set(split.val) | set(split.test) == set(range(len(images)))
    assert not set(split.train) & set(split.test) and not set(split.val) & set(split.test)
    assert set(images.roles[split.test]) == {"test"} and len(split.test) == 8
    assert m["overlap"]["train_val"] == [] and m["overlap"]["train_test"]  # val classes leave training
    check_manifest(m)  # a declared opt-out passes the stored-manifest check
    moved = images.roles.copy()
    moved[np.flatnonzero(moved == "test")[0]] = "train"  # one image changes split: another split
    again = split_by_roles(dataclasses.replace(images, roles=moved))
    assert again.manifest["hash"] != split_by_roles(images).manifest["hash"]
    assert main(["data", "verify", "--dataset", "csv", "--root", str(path), "--shared-classes"]) == 0
    assert "24 in train classes, 8 in test classes (given, classes shared split, leave-one-out): OK" in (
        capsys.readouterr().out
    )


def test_the_opt_out_needs_pairs_within_each_split(shared: tuple[pd.DataFrame, Path]) -> None:
    frame, root = shared
    frame.loc[7, "split"] = "train"  # class 2 keeps one test image (its third, line 8)
    with pytest.raises(DataError, match=r"list.csv:8: class 2 has this one image"):
        get_dataset("csv", class_disjoint=False).load(write(frame, root))


def test_class_disjoint_is_an_option_of_csv_only() -> None:
    with pytest.raises(ConfigError, match="class_disjoint applies to dataset: csv, not cub"):
        parse_config({"name": "x", "dataset": "cub", "class_disjoint": False, "budget": {"n_trials": 1}})
    cfg = parse_config({"name": "x", "dataset": "csv", "class_disjoint": False, "budget": {"n_trials": 1}})
    assert cfg.dataset_spec().class_disjoint is False


# --- review: the same file under two names, blank lines, parquet cells, columns, batch and faiss ---


def test_the_same_image_under_another_name_is_a_duplicate(listed: pd.DataFrame, cub_root: Path) -> None:
    frame = listed.copy()
    frame.loc[6, "path"] = "./" + frame.loc[0, "path"]  # line 8: line 2's image again
    with pytest.raises(
        DataError, match=r"list.csv:8: \./images/001.* is listed twice \(first at .*list.csv:2 as"
    ):
        load(write(frame, cub_root))


def test_a_blank_line_keeps_the_line_numbers_of_the_rows_after_it(
    listed: pd.DataFrame, cub_root: Path
) -> None:
    lines = write(listed, cub_root).read_text().splitlines()
    lines.insert(3, "")  # after line 3
    lines[8] = lines[8].replace(".jpg", "-gone.jpg")  # now line 9
    (cub_root / "list.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"list.csv:9: image .*-gone.jpg does not exist"):
        load(cub_root / "list.csv")


def test_parquet_nulls_and_integral_floats_read_as_a_csv_would(listed: pd.DataFrame, cub_root: Path) -> None:
    frame = listed.assign(label=listed["label"].astype(float), is_query=[None] * len(listed))
    frame.loc[0, "is_query"] = True
    images = get_dataset("csv").load(write(frame, cub_root, "list.parquet"))
    assert images.labels.tolist() == listed["label"].tolist()  # 1.0 is class 1, not a name
    assert images.query is not None and images.query.sum() == 1  # a null flag is false
    frame.loc[3, "label"] = None
    with pytest.raises(DataError, match="list.parquet row 4: empty label"):
        get_dataset("csv").load(write(frame, cub_root, "list.parquet"))


def test_a_column_twice_is_refused(listed: pd.DataFrame, cub_root: Path) -> None:
    frame = listed.assign(Label=listed["label"])
    with pytest.raises(DataError, match="column 'label' appears twice"):
        load(write(frame, cub_root))


def test_a_given_validation_split_must_leave_classes_for_the_widest_batch(
    listed: pd.DataFrame, cub_root: Path, tmp_path: Path
) -> None:
    from harness.study.data import prepare

    listed["split"] = np.select([listed["label"] <= 3, listed["label"] <= 6], ["train", "validation"], "test")
    raw = {
        "name": "own",
        "dataset": "csv",
        "data_root": str(write(listed, cub_root)),
        "image_size": 32,
        "results_dir": str(tmp_path / "r"),
        "backbone": "test_efficientnet",
        "pretrained": False,
        "budget": {"n_trials": 1},
        "search_space": {"batch_p": {"choices": [2, 4]}},
    }
    with pytest.raises(
        ConfigError, match="train split has 3 classes .*batch_p reaches 4; lower batch_p to at most 3"
    ):
        prepare(parse_config(raw))


def test_knn_faiss_without_faiss_is_refused_with_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "faiss" else real(name, *a)
    )
    with pytest.raises(
        ConfigError, match="evaluate.knn: faiss, but faiss is not installed; pip install faiss-cpu"
    ):
        parse_config({"name": "x", "dataset": "cub", "budget": {"n_trials": 1}, "evaluate": {"knn": "faiss"}})


def test_a_linked_folder_is_followed_out_of_the_dataset_not_back_into_it(
    folder: Path, tmp_path: Path
) -> None:
    import shutil

    root = tmp_path / "classes"
    shutil.copytree(folder, root)
    first = sorted(root.iterdir())[0]
    (first / "loop").symlink_to(root, target_is_directory=True)  # back into the dataset: not followed
    outside = tmp_path / "more"
    outside.mkdir()
    shutil.copy(next(first.glob("*.jpg")), outside / "elsewhere.jpg")
    (first / "more").symlink_to(outside, target_is_directory=True)  # out of it: followed
    images = get_dataset("folder").load(root)
    assert len(images) == 3 * N_CLASSES + 1 and f"{first.name}/more/elsewhere.jpg" in images.paths


def test_a_draw_setting_on_a_dataset_with_its_own_split_is_warned_about() -> None:
    from harness.study.config import config_warnings

    cfg = parse_config({"name": "x", "dataset": "cub", "test_fraction": 0.3, "budget": {"n_trials": 1}})
    assert any(
        "test_fraction draw the test classes" in w and "split is official" in w
        for w in config_warnings(cfg, {"classes": {}})
    )
    own = parse_config({"name": "x", "dataset": "csv", "split_seed": 2, "budget": {"n_trials": 1}})
    assert any("split is given" in w for w in config_warnings(own, {"classes_split": "given"}))
    assert not any("draw the test classes" in w for w in config_warnings(own, {"classes_split": "seeded"}))
