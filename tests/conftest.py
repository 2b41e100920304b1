"""No test leaves a process behind (issue #16, item 8).

Every process a test body starts inherits ``HARNESS_TEST_CALL`` (set for the test's call phase
only, so daemons a fixture starts for a whole module are not its own). When the test ends, on
every path, whatever still carries its mark is killed with its process group, and a warning names
it: a timed-out ``subprocess.run`` kills snakemake, not the jobs snakemake started.
"""

from __future__ import annotations

import os
import signal
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.study.storage import process_start

MARK = "HARNESS_TEST_CALL"


def _marked(value: str) -> list[int]:
    needle = f"{MARK}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def _end(pids: list[int]) -> None:
    """SIGKILL each, and its process group unless that is the test runner's own."""
    ours = os.getpgid(0)
    for pid in pids:
        try:
            group = os.getpgid(pid)
            if group != ours:
                os.killpg(group, signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    if not Path("/proc/self/environ").exists():  # no procfs: nothing to find them by
        yield
        return
    value = uuid.uuid4().hex
    os.environ[MARK] = value
    try:
        yield
    finally:
        del os.environ[MARK]
        left = [pid for pid in _marked(value) if process_start(pid) is not None]  # zombies are gone
        if left:
            _end(left)
            warnings.warn(
                f"{item.nodeid} left {len(left)} process(es) running (pids {left}); killed", stacklevel=1
            )
