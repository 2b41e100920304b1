"""Retrieval evaluation: exact kNN in torch and the standard DML metrics built on it."""

from __future__ import annotations

from harness.evaluation.knn import knn
from harness.evaluation.metrics import retrieval_metrics

__all__ = ["knn", "retrieval_metrics"]
