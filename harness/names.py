"""The names a study config may use, without importing what implements them.

Validating a config must take milliseconds, not the seconds of importing torch: the registries
(``harness.data``, ``harness.mining``, ``harness.losses``) are keyed by these tuples, and a test
checks that they agree.
"""

from __future__ import annotations

DATASETS: tuple[str, ...] = ("cub", "cars")
# official training classes per dataset (the retrieval protocol's first half)
TRAIN_CLASSES: dict[str, int] = {"cub": 100, "cars": 98}
ONLINE_MINERS: tuple[str, ...] = ("all", "semihard", "hard", "batch-hard", "distance-weighted", "random")
OFFLINE_MINERS: tuple[str, ...] = ("offline-hard", "offline-semihard", "offline-random")
MINERS: tuple[str, ...] = ONLINE_MINERS + OFFLINE_MINERS
DISTANCES: tuple[str, ...] = ("euclidean", "squared_euclidean", "cosine")


def carve_out(n_train_classes: int, val_fraction: float) -> tuple[int, int]:
    """(classes left to train on, validation classes) when ``val_fraction`` of the training classes
    become validation classes: the rule of the split, and of the config check that runs before it."""
    n_val = max(2, int(round(val_fraction * n_train_classes)))
    return n_train_classes - n_val, n_val
