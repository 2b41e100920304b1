"""Which workers of a study are alive: each registers a file under ``results/{study}/running/`` for
as long as it runs, from before it loads its data to its exit.

A worker that has no trial yet (it is preparing its data) is alive all the same: ``delete`` must
not set its study aside under it. On this machine a registration whose process is gone (kill -9) is
known dead and removed; one from another machine counts as alive until the user says otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from harness.study.config import StudyConfig
from harness.study.storage import owner_is_dead, owner_record


def _folder(cfg: StudyConfig) -> Path:
    return cfg.study_dir / "running"


@contextlib.contextmanager
def registered(cfg: StudyConfig) -> Iterator[None]:
    """This process is a live worker of ``cfg``'s study for the block."""
    me = owner_record(-1)
    path = _folder(cfg) / f"{me['host']}-{me['pid']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(me))
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def live_workers(cfg: StudyConfig) -> list[tuple[Path, dict]]:
    """The registrations of workers that may be alive (dead ones of this machine are removed)."""
    out = []
    for path in sorted(_folder(cfg).glob("*.json")) if _folder(cfg).is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if owner_is_dead(record, -1):
            path.unlink(missing_ok=True)
        else:
            out.append((path, record))
    return out


def describe_live(cfg: StudyConfig) -> str | None:
    """One line about the live workers of a study, or None."""
    live = live_workers(cfg)
    if not live:
        return None
    path, first = live[0]
    more = f" and {len(live) - 1} more" if len(live) > 1 else ""
    here = first.get("host") == os.uname().nodename
    how = "stop it first" if here else f"stop it first (if it is gone, remove {path})"
    return f"a worker is running (pid {first.get('pid')} on {first.get('host')}{more}); {how}"
