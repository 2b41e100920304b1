"""Dataset registry: config files name a dataset, this maps the name to its loader."""

from __future__ import annotations

from harness.data.base import ImageList
from harness.data.cars import Cars196
from harness.data.cub import CUB200
from harness.errors import unknown_name

Dataset = CUB200 | Cars196

DATASETS: dict[str, Dataset] = {"cub": CUB200(), "cars": Cars196()}


def get_dataset(name: str) -> Dataset:
    """The loader registered under ``name``; an unknown name lists the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise unknown_name("dataset", name, list(DATASETS)) from None


__all__ = ["DATASETS", "Cars196", "CUB200", "Dataset", "ImageList", "get_dataset"]
