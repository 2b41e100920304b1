"""P x K class-balanced batches: P classes, K images each, deterministic for a seed."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from harness.errors import ConfigError


class PKSampler:
    """Yields index batches of P classes x K images over ``labels``.

    An epoch has ``len(labels) // (P*K)`` batches so that every strategy sees the same number of
    images per epoch. A class with fewer than K images is sampled with replacement.
    """

    def __init__(self, labels: np.ndarray, p: int, k: int, seed: int = 0) -> None:
        self.labels = np.asarray(labels)
        self.classes, inverse = np.unique(self.labels, return_inverse=True)
        if p > len(self.classes):
            raise ConfigError(f"batch_p={p} exceeds the {len(self.classes)} training classes; lower batch_p")
        if p < 2 or k < 2:
            raise ConfigError(f"batch_p and batch_k must both be >= 2 for triplets, got P={p} K={k}")
        self.p, self.k = p, k
        self.by_class = [np.flatnonzero(inverse == c) for c in range(len(self.classes))]
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return max(1, len(self.labels) // (self.p * self.k))

    def __iter__(self) -> Iterator[np.ndarray]:
        for _ in range(len(self)):
            chosen = self.rng.choice(len(self.classes), size=self.p, replace=False)
            parts = []
            for c in chosen:
                members = self.by_class[c]
                parts.append(self.rng.choice(members, size=self.k, replace=len(members) < self.k))
            yield np.concatenate(parts)
