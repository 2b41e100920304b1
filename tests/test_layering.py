"""The package's dependency order (README "Layout"): data → models → mining/losses → evaluation →
training → tracking → study → report. No module imports a later layer, lazily inside a function
included; the shared helpers (errors, registry, params, pglock, progress, pipeline) import no layer at all."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "harness"
LAYER = {
    "data": 0,
    "models": 1,
    "mining": 2,
    "losses": 2,
    "evaluation": 3,
    "training": 4,
    "tracking": 5,
    "study": 6,
    "report": 7,
}
HELPERS = {"errors", "registry", "params", "pglock", "progress", "pipeline"}


def harness_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return [m for m in found if m.startswith("harness.")]


def back_edges(path: Path, package: Path = PACKAGE) -> list[str]:
    parts = path.relative_to(package).parts
    own = LAYER.get(parts[0], -1) if len(parts) > 1 else -1  # -1: a helper module
    if len(parts) == 1 and path.stem not in HELPERS:
        return []  # cli, bench, smoke: the entry points, above every layer
    bad = []
    for module in harness_imports(path):
        top = module.split(".")[1]
        if top in LAYER and LAYER[top] > own:
            bad.append(module)
        elif top not in LAYER and top not in HELPERS:
            bad.append(module)  # an entry point (cli, bench, smoke) imported from inside
    return bad


def test_no_module_imports_a_later_layer() -> None:
    offenders = {
        str(p.relative_to(PACKAGE)): bad for p in sorted(PACKAGE.rglob("*.py")) if (bad := back_edges(p))
    }
    assert offenders == {}


@pytest.mark.parametrize(
    "where, source",
    [
        ("data/x.py", "from harness.models import create_trunk"),
        ("training/x.py", "def f():\n    import harness.study.config\n"),
        ("errors_like", "from harness.data import cub"),
        ("study/x.py", "from harness.cli import main"),
    ],
)
def test_a_back_edge_is_found(where: str, source: str, tmp_path: Path) -> None:
    path = tmp_path / "harness" / (where if where.endswith(".py") else "errors.py")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    assert back_edges(path, tmp_path / "harness")
