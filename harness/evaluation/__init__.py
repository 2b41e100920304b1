"""Retrieval evaluation: exact kNN in torch and the standard DML metrics built on it."""

from __future__ import annotations

from harness.evaluation.knn import DISTANCES, knn
from harness.evaluation.metrics import retrieval_metrics

__all__ = ["DISTANCES", "knn", "retrieval_metrics"]
