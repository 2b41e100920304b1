"""Retrieval evaluation: exact kNN (torch, or faiss's flat indexes) and the standard DML metrics built
on it, leave-one-out or query/gallery, in memory bounded for galleries of any size."""

from __future__ import annotations

from harness.evaluation.knn import BACKENDS, knn
from harness.evaluation.metrics import per_query_scores, retrieval_metrics

__all__ = ["BACKENDS", "knn", "per_query_scores", "retrieval_metrics"]
