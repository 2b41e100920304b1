"""Experiment tracking (MLflow)."""

from harness.tracking.mlflow_tracker import Tracker

__all__ = ["Tracker"]
