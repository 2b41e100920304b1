"""Experiment tracking (MLflow). ``Tracker`` is imported on first use: ``check_reachable`` (and a
config check) must not pay for importing MLflow."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.tracking.reachable import check_reachable

if TYPE_CHECKING:
    from harness.tracking.mlflow_tracker import Tracker


def __getattr__(name: str) -> Any:
    if name == "Tracker":
        from harness.tracking.mlflow_tracker import Tracker

        return Tracker
    raise AttributeError(name)


__all__ = ["Tracker", "check_reachable"]
