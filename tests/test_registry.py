"""Registries: the names read from the source (no import) are exactly those the modules register;
a new part is one new file; an unknown name lists the known ones."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.registry import DATASETS, DISTANCES, MINERS, TRUNKS, Registry, static_modules


@pytest.mark.parametrize("registry", [DATASETS, DISTANCES, MINERS, TRUNKS], ids=lambda r: r.kind)
def test_names_read_from_the_source_are_the_registered_ones(registry: Registry) -> None:
    static = registry.names()
    assert static, registry.kind
    assert tuple(e.name for e in registry.entries()) == static


def test_the_known_names() -> None:
    assert DATASETS.names() == ("cars", "csv", "cub", "folder", "inshop", "sop")
    assert DISTANCES.names() == ("cosine", "euclidean", "squared_euclidean")
    assert TRUNKS.names() == ("finetune", "frozen", "partial")


def test_every_miner_says_whether_it_is_offline_and_names_its_pml_reference() -> None:
    """What a miner is comes from its class alone (no list of names elsewhere): offline ones mine
    between epochs and have no PML reference; an online one names PML's equal miner, or says its
    reference is only a cost to compare with (random negatives)."""
    from harness.losses import get_distance
    from harness.mining import get_miner
    from harness.params import is_offline

    for name in MINERS.names():
        miner = get_miner(name, get_distance("cosine"), 0.2)
        assert is_offline(name) == miner.offline
        if miner.offline:
            assert miner.reference() is None and hasattr(miner, "mine_epoch")
        else:
            ref = miner.reference()
            assert ref is not None and callable(ref), name
            pml = get_miner(name, get_distance("cosine"), 0.2, impl="pml")
            assert (type(pml).__name__ == "PMLMiner") == miner.reference_is_equal, name
    assert not is_offline("cosine")  # a compare: arm that is no miner


def test_the_evaluation_ranks_by_each_registered_distance() -> None:
    """kNN takes the distance object a study trains with, so a registered distance is evaluated by
    its own maths: the neighbours are those of its full matrix, nearest first in its own sense."""
    import torch

    from harness.evaluation import knn
    from harness.losses import get_distance

    x = torch.randn(30, 5, generator=torch.Generator().manual_seed(0))
    for name in DISTANCES.names():
        measure = get_distance(name)
        full = measure(x).fill_diagonal_(float("-inf") if measure.is_inverted else float("inf"))
        want = torch.topk(full, 4, dim=1, largest=measure.is_inverted).indices
        assert torch.equal(knn(x, 4, distance=name)[1], want), name


def test_names_import_nothing() -> None:
    """Config checks read the names before anything heavy loads: no torch, no numpy."""
    code = (
        "import sys\nfrom harness.registry import MINERS, DISTANCES, TRUNKS, DATASETS\n"
        "n = [r.names() for r in (MINERS, DISTANCES, TRUNKS, DATASETS)]\n"
        "print(all(n), 'torch' in sys.modules, 'numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False", "False"]


def test_a_new_part_is_one_new_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module dropped into a registry's package is found by name, built on demand, and nothing
    else of the package is imported for it."""
    pkg = tmp_path / "harness_plugins_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "heavy.py").write_text("raise ImportError('must not be imported')\n")
    (pkg / "mine.py").write_text(
        textwrap.dedent(
            """
            from harness_plugins_probe import REG

            @REG.register("mine", flavour="sweet")
            class Mine:
                def __init__(self, flavour: str) -> None:
                    self.flavour = flavour
            """
        )
    )
    (pkg / "__init__.py").write_text(
        "from harness.registry import Registry\nREG = Registry('probe', 'harness_plugins_probe')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    static_modules.cache_clear()
    import harness_plugins_probe

    reg = harness_plugins_probe.REG
    assert reg.names() == ("mine",)
    entry = reg.entry("mine")
    assert entry.target(**entry.options).flavour == "sweet"
    with pytest.raises(ConfigError, match="unknown probe 'yours'; known probes: mine"):
        reg.get("yours")
    static_modules.cache_clear()


def overlay_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, package: str, registry: Registry, file: str, source: str
) -> None:
    """``source`` as ``harness/<package>/<file>``, from a folder overlaid on the package (as a file
    dropped into the package would be); nothing of the package is edited."""
    import importlib

    import harness

    overlay = tmp_path / "overlay"
    (overlay / package).mkdir(parents=True)
    (overlay / package / file).write_text(source)
    sub = importlib.import_module(f"harness.{package}")
    monkeypatch.setattr(harness, "__path__", [*harness.__path__, str(overlay)])
    monkeypatch.setattr(harness.__spec__, "submodule_search_locations", harness.__path__)
    monkeypatch.setattr(sub, "__path__", [*sub.__path__, str(overlay / package)])
    monkeypatch.setattr(registry, "_loaded", False)
    static_modules.cache_clear()


PROBE = """
import torch

from harness.mining.base import Miner, Selection, masks
from harness.registry import MINERS


@MINERS.register("probe-nearest")
class ProbeNearestMiner(Miner):
    \"\"\"Each anchor with its first positive and its closest negative.\"\"\"

    def select(self, embeddings, f, labels, u) -> Selection:
        pos, neg = masks(labels)
        inf = f.new_full((), float("inf"))
        p = pos.float().argmax(1)
        n = torch.where(neg, f, inf).argmin(1)
        return torch.arange(len(f), device=f.device), p, n, pos.any(1) & neg.any(1)
"""


def test_a_new_miner_is_one_module_and_runs_in_a_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One module in a folder overlaid on harness.mining (as a file dropped into harness/mining/ would
    be), nothing else edited: the config accepts its name, a one-trial study trains with it, the
    benchmark's reference path falls back to it (PML has none), and it is online."""
    import yaml
    from fixtures import make_cub
    from helpers import tiny_config
    from optuna.trial import TrialState

    from harness.cli import main
    from harness.losses import get_distance
    from harness.mining import get_miner, online_miners
    from harness.params import is_offline
    from harness.study import parse_config
    from harness.study.identity import load_study

    overlay_module(tmp_path, monkeypatch, "mining", MINERS, "probe_nearest.py", PROBE)
    try:
        assert "probe-nearest" in MINERS.names() and "probe-nearest" in online_miners()
        assert not is_offline("probe-nearest")
        miner = get_miner("probe-nearest", get_distance("cosine"), 0.2, impl="pml")
        assert type(miner).__name__ == "ProbeNearestMiner"  # no PML reference: its own path
        raw = tiny_config(
            make_cub(tmp_path / "data", per_class=4, noise=60.0), tmp_path / "results", n_trials=1
        )
        raw["search_space"] = raw["search_space"] | {"mining": "probe-nearest"}
        path = tmp_path / "probe.yaml"
        path.write_text(yaml.safe_dump(raw))
        assert main(["study", "run", "--config", str(path)]) == 0
        (trial,) = load_study(parse_config(raw)).trials
        assert (
            trial.state == TrialState.COMPLETE
            and trial.user_attrs["trial_params"]["mining"] == "probe-nearest"
        )
    finally:
        static_modules.cache_clear()
        MINERS._entries.pop("probe-nearest", None)
        sys.modules.pop("harness.mining.probe_nearest", None)


PROBE_DATASET = """
from pathlib import Path

import numpy as np

from harness.data.base import ImageList
from harness.data.dataset import Dataset, Listing
from harness.registry import DATASETS


@DATASETS.register("probe-lines")
class ProbeLines(Dataset):
    \"\"\"A folder of images listed in labels.txt, one 'relative/path.jpg class' line each.\"\"\"

    name = "probe-lines"
    num_classes = 40
    num_images = None
    train_classes = range(1, 21)
    test_classes = range(21, 41)

    def find_root(self, root: Path) -> Path:
        if not (root / "labels.txt").is_file():
            raise self.missing_root(root, f"{root}: no labels.txt")
        return root

    def read(self, root: Path) -> Listing:
        rows = [line.split() for line in (root / "labels.txt").read_text().splitlines()]
        labels = np.array([int(c) for _, c in rows], dtype=np.int64)
        images = ImageList(self.name, root, tuple(p for p, _ in rows), labels)
        return Listing(images, len(set(labels.tolist())), "labels.txt", root / "labels.txt")
"""


def test_a_new_dataset_is_one_module_and_runs_in_a_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One dataset module in a folder overlaid on harness.data (as a file dropped into harness/data/
    would be) and its fixture, nothing else edited: the config accepts its name, `data verify` reads
    it, and a one-trial study prepares, trains and records it."""
    import yaml
    from fixtures import make_cub
    from helpers import tiny_config
    from optuna.trial import TrialState

    from harness.cli import main
    from harness.study import parse_config
    from harness.study.identity import load_study

    cub = make_cub(tmp_path / "cub", n_classes=40, per_class=4, noise=60.0)  # the fixture: its images
    root = tmp_path / "probe"
    (root / "img").mkdir(parents=True)
    lines = []
    for line, label in zip(
        (cub / "images.txt").read_text().split("\n")[:-1],
        (cub / "image_class_labels.txt").read_text().split("\n")[:-1],
        strict=True,
    ):
        rel = line.split()[1]
        target = root / "img" / rel.replace("/", "_")
        target.write_bytes((cub / "images" / rel).read_bytes())
        lines.append(f"img/{target.name} {label.split()[1]}")
    (root / "labels.txt").write_text("\n".join(lines) + "\n")

    overlay_module(tmp_path, monkeypatch, "data", DATASETS, "probe_lines.py", PROBE_DATASET)
    try:
        assert "probe-lines" in DATASETS.names()
        assert main(["data", "verify", "--dataset", "probe-lines", "--root", str(root)]) == 0
        raw = tiny_config(root, tmp_path / "results", n_trials=1) | {"dataset": "probe-lines"}
        path = tmp_path / "probe.yaml"
        path.write_text(yaml.safe_dump(raw))
        assert main(["study", "run", "--config", str(path)]) == 0
        (trial,) = load_study(parse_config(raw)).trials
        assert trial.state == TrialState.COMPLETE
        manifest = (tmp_path / "results" / raw["name"] / "split_manifest.json").read_text()
        assert "probe-lines" in manifest
    finally:
        static_modules.cache_clear()
        DATASETS._entries.pop("probe-lines", None)
        sys.modules.pop("harness.data.probe_lines", None)
