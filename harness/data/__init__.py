"""Datasets: each registers itself (``@DATASETS.register("cub")``) in its own module of this package."""

from __future__ import annotations

from harness.data.base import ImageList
from harness.data.dataset import Dataset
from harness.registry import DATASETS


def get_dataset(name: str) -> Dataset:
    """The loader registered under ``name``; an unknown name lists the known ones."""
    return DATASETS.get(name)()


__all__ = ["DATASETS", "Dataset", "ImageList", "get_dataset"]
