"""Telling the machine's errors from the trial's: a full disk or a lost database connection stops the
worker and re-queues its trial (the same trial succeeds once it is fixed); anything else is the
trial's own crash."""

from __future__ import annotations

import optuna

from harness.errors import first_line

RESOURCE_WORDS = (
    "database or disk is full",
    "disk is full",
    "disk i/o error",
    "readonly database",
    "unable to open database",
    "no space",
)


class WorkerStopped(Exception):
    """A trial could not go on for a reason outside it (a full disk, a vanished file): re-queue it."""

    def __init__(self, trial: int, error: BaseException) -> None:
        super().__init__(str(error))
        self.trial, self.error = trial, error


def resource_error(e: BaseException | None) -> bool:
    """Errors of the machine, not of the trial: the same trial succeeds once they are fixed.

    Follows the chain of causes: Optuna's RDB storage wraps every database error (a full disk, a
    lost connection) in a StorageInternalError whose own text says nothing."""
    from sqlalchemy.exc import OperationalError

    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError | OperationalError | optuna.exceptions.StorageInternalError):
            return True
        if any(k in str(e).lower() for k in RESOURCE_WORDS):
            return True
        e = e.__cause__ or e.__context__
    return False


def describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}{f' ({e.filename})' if e.filename else ''}"
    first = first_line(e)
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
