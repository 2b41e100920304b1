"""The package's dependency order (docs/development.md, "Layout"): data → models → mining/losses →
evaluation → training → tracking → study → report. No module imports a later layer, lazily inside a function
included; the shared helpers (errors, registry, params, pglock, progress, pipeline) import no layer at all."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers import REPO

PACKAGE = REPO / "harness"
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


# --- no cycle inside a layer either (issue #20, item 4) ----------------------------------------------


def _module(path: Path, package: Path) -> str:
    parts = [package.name, *path.relative_to(package).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (lazy imports inside functions included); ``from
    pkg import name`` is an edge to ``pkg.name`` where that is a module, else to ``pkg`` itself."""
    modules = {_module(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        out: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                out |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out |= {
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                }
        graph[name] = {m for m in out if m in modules and m != name}
    return graph


def import_cycles(package: Path = PACKAGE) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan), each sorted."""
    graph, index, low, stack, on, found = import_graph(package), {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while not part or part[-1] != v:
                part.append(stack.pop())
                on.discard(part[-1])
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_anywhere() -> None:
    assert import_cycles() == []


def test_a_cycle_inside_a_layer_is_found(tmp_path: Path) -> None:
    package = tmp_path / "harness"
    (package / "report").mkdir(parents=True)
    (package / "report" / "build.py").write_text("def f():\n    from harness.report.comparison import g\n")
    (package / "report" / "comparison.py").write_text("from harness.report.build import f\n")
    assert import_cycles(package) == [["harness.report.build", "harness.report.comparison"]]


def test_no_private_name_is_imported_from_another_module() -> None:
    private = {
        f"{p.relative_to(PACKAGE)}: {node.module}.{a.name}"
        for p in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("harness")
        for a in node.names
        if a.name.startswith("_") and not a.name.startswith("__")
    }
    assert private == set()
