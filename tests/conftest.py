"""No test leaves a process behind (issue #16, item 8).

Every process a test body starts inherits ``HARNESS_TEST_CALL`` (set for the test's call phase
only, so daemons a fixture starts for a whole module are not its own). When the test ends, on
every path, whatever still carries its mark is killed with its process group, and a warning names
it: a timed-out ``subprocess.run`` kills snakemake, not the jobs snakemake started.
"""

from __future__ import annotations

import os
import shutil
import signal
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

# No test reaches a model hub: the hub is off and its caches are a throwaway folder, set before
# huggingface_hub or torch read them (they read these at import); tests that need weights build a
# real hub cache in their own temp folder (tests/models/test_weights.py).
_HUB_HOME = Path(os.environ.get("TMPDIR", "/tmp")) / f"harness-tests-hub-{os.getpid()}"
os.environ.update(HF_HUB_OFFLINE="1", HF_HOME=str(_HUB_HOME / "hf"), TORCH_HOME=str(_HUB_HOME / "torch"))

from harness.study.storage import process_start  # noqa: E402

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


# --- the checkout is left as it was found (issue #20, item 3) ----------------------------------------

REPO = Path(__file__).resolve().parents[1]
_BEFORE = pytest.StashKey[str | None]()


def _status() -> str | None:
    """``git status --porcelain`` of the checkout, or None where it is not a git checkout."""
    import subprocess

    try:
        r = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=all"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout if r.returncode == 0 else None


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_BEFORE] = _status()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_HUB_HOME, ignore_errors=True)
    before = session.config.stash.get(_BEFORE, None)
    after = _status() if before is not None else None
    if before is None or after is None or after == before:
        return
    old, new = set(before.splitlines()), set(after.splitlines())
    changed = sorted(new - old) + [f"(gone) {line}" for line in sorted(old - new)]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"the tests changed the checkout (git status differs): {'; '.join(changed[:10])}", red=True
        )
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="module")
def cub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CUB in the official layout, hard enough that retrieval is not trivial (per module)."""
    from fixtures import make_cub

    return make_cub(tmp_path_factory.mktemp("cub"), per_class=4, noise=60.0)


@pytest.fixture(scope="module")
def data_root(cub: Path) -> Path:
    return cub
