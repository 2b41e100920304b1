"""PostgreSQL advisory locks: one process at a time across machines, freed by the server when the
holder's connection drops (a killed worker cannot leave one held).

Used around schema creation (Optuna's tables, MLflow's tables: two first runs at once on a fresh
database crash each other with UniqueViolation) and for a study's budget lock (sweep, count, take a
trial). A lock file cannot do these: the processes may run on different nodes.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

from harness.errors import HarnessError, first_line, redact_url


def key_of(name: str) -> int:
    """A stable signed 64-bit key for a lock's name (every harness process derives the same one)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def is_postgresql(url: str) -> bool:
    return url.startswith("postgresql")


class AdvisoryLock:
    """A session-level advisory lock on its own connection, taken and released any number of times."""

    def __init__(self, url: str, name: str, what: str = "database") -> None:
        import psycopg2

        self.key = key_of(name)
        dsn = "postgresql://" + url.split("://", 1)[1]  # postgresql+psycopg2:// is SQLAlchemy's form
        try:
            self.conn: Any = psycopg2.connect(dsn, connect_timeout=10)
        except psycopg2.Error as e:
            why = first_line(e, type(e).__name__)
            raise HarnessError(
                f"cannot open {what} {redact_url(url)}: {why}; check the URL, that the server is up and"
                " reachable and that the database exists"
            ) from None
        self.conn.autocommit = True

    def acquire(self) -> None:
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (self.key,))

    def release(self) -> None:
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (self.key,))

    def close(self) -> None:
        self.conn.close()  # ends the session, which releases anything it held


@contextlib.contextmanager
def advisory_lock(url: str, name: str, what: str = "database") -> Iterator[None]:
    """Hold the lock ``name`` in the PostgreSQL database at ``url`` for the block."""
    lock = AdvisoryLock(url, name, what)
    try:
        lock.acquire()
        yield
    finally:
        lock.close()
