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
    assert DATASETS.names() == ("cars", "cub")
    assert DISTANCES.names() == ("cosine", "euclidean", "squared_euclidean")
    assert TRUNKS.names() == ("finetune", "frozen", "partial")
    assert set(MINERS.names()) == {
        "all",
        "semihard",
        "hard",
        "batch-hard",
        "distance-weighted",
        "random",
        "offline-hard",
        "offline-semihard",
        "offline-random",
    }


def test_every_training_distance_is_one_the_evaluation_computes() -> None:
    from harness.evaluation import DISTANCES as EVAL_DISTANCES

    assert set(DISTANCES.names()) <= set(EVAL_DISTANCES)


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
