"""Brute-force oracles shared by the mining and loss tests (plain Python loops, as PML's tests do)."""

from __future__ import annotations


def all_triplets(labels: list[int]) -> list[tuple[int, int, int]]:
    """Every (anchor, positive, negative) index triple of a batch."""
    n = len(labels)
    return [
        (a, p, q)
        for a in range(n)
        for p in range(n)
        for q in range(n)
        if p != a and labels[p] == labels[a] and labels[q] != labels[a]
    ]
