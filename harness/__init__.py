"""Triplet-loss benchmark harness: tune and compare triplet-loss metric learning honestly."""

from __future__ import annotations

__version__ = "0.1.0"
