"""Datasets: each registers itself (``@DATASETS.register("cub")``) in its own module of this package."""

from __future__ import annotations

from harness.data.base import ImageList
from harness.data.dataset import Dataset
from harness.errors import ConfigError
from harness.registry import DATASETS


def get_dataset(name: str, **options: object) -> Dataset:
    """The loader registered under ``name``; an unknown name lists the known ones. ``options``: the
    settings the loader takes (its ``options``, e.g. ``folder``'s ``split_file``); others are refused."""
    cls = DATASETS.get(name)
    unknown = sorted(set(options) - set(cls.options))
    if unknown:
        raise ConfigError(
            f"{unknown[0]} applies to dataset: {', '.join(dataset_taking(unknown[0])) or 'none'}, not {name}"
        )
    return cls(**options)


def dataset_taking(option: str) -> list[str]:
    """The datasets whose loader takes ``option``."""
    return [n for n in DATASETS.names() if option in DATASETS.get(n).options]


__all__ = ["DATASETS", "Dataset", "ImageList", "get_dataset"]
