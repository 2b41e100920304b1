"""Named parts that register themselves where they are defined, as timm's ``@register_model``.

A miner, dataset, distance or trunk mode is one decorated class (or factory) in its own module of its package:

    @MINERS.register("semihard", kind="semihard")
    class TripletMarginMiner(Miner): ...

Adding one is adding that file: nothing else lists it. A study config names parts before anything
heavy is imported (a typo must cost milliseconds, not the seconds of importing torch), so ``names``
reads the names without importing anything: from the ``register("name", ...)`` calls in the
package's source, parsed, not run; and ``get`` imports only the module that registers the name asked
for. ``tests/test_registry.py`` checks that the names read from the source are exactly those the
modules register.
"""

from __future__ import annotations

import ast
import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Generic, TypeVar

from harness.errors import unknown_name

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered part and the keyword arguments it is built with under this name."""

    name: str
    target: T
    options: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str) -> None:
        self.kind, self.package = kind, package
        self._entries: dict[str, Entry[T]] = {}
        self._loaded = False

    def register(self, name: str, **options: Any) -> Callable[[T], T]:
        """Decorator: ``target`` is known as ``name``; ``options`` are passed when it is built."""

        def add(target: T) -> T:
            if name in self._entries and self._entries[name].target is not target:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, target, dict(options))
            return target

        return add

    def _load(self, name: str | None = None) -> None:
        """Import the module that registers ``name`` (every registering module when None)."""
        if self._loaded or (name is not None and name in self._entries):
            return
        where = static_modules(self.package)
        for module in [where[name]] if name in where else sorted(set(where.values())):
            importlib.import_module(module)
        self._loaded = name is None or name not in where

    def entry(self, name: str) -> Entry[T]:
        self._load(name)
        try:
            return self._entries[name]
        except KeyError:
            raise unknown_name(self.kind, name, self.names()) from None

    def get(self, name: str) -> T:
        return self.entry(name).target

    def entries(self) -> list[Entry[T]]:
        self._load()
        return [self._entries[n] for n in sorted(self._entries)]

    def names(self) -> tuple[str, ...]:
        """Every registered name, sorted, read from the package's source: nothing is imported."""
        return tuple(sorted(static_modules(self.package)))

    def check(self, name: str) -> None:
        """Raise the one-line error for an unknown ``name`` (listing the known ones)."""
        if name not in self.names():
            raise unknown_name(self.kind, name, self.names())


@functools.cache
def static_modules(package: str) -> dict[str, str]:
    """{name: module} for every ``<registry>.register("name", ...)`` decorator in the package's
    modules, read from their source without running them."""
    top, *rest = package.split(".")
    spec = find_spec(top)  # the top package only: finding a subpackage would import its parents
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"no package {top!r}")
    out: dict[str, str] = {}
    for root in spec.submodule_search_locations:
        folder = Path(root).joinpath(*rest)
        for path in sorted(folder.glob("*.py")):
            module = package if path.stem == "__init__" else f"{package}.{path.stem}"
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                for d in getattr(node, "decorator_list", []):
                    if (
                        isinstance(d, ast.Call)
                        and isinstance(d.func, ast.Attribute)
                        and d.func.attr == "register"
                        and d.args
                        and isinstance(d.args[0], ast.Constant)
                        and isinstance(d.args[0].value, str)
                    ):
                        out.setdefault(d.args[0].value, module)
    return out


# The registries of the parts a study config names; each package's modules fill their own.
DATASETS: Registry[Any] = Registry("dataset", "harness.data")
MINERS: Registry[Any] = Registry("miner", "harness.mining")
DISTANCES: Registry[Any] = Registry("distance", "harness.losses")
TRUNKS: Registry[Any] = Registry("trunk mode", "harness.study.trunks")
