"""Per-trial checkpoints: written atomically at the end of each epoch, read back by a retry.

A checkpoint holds everything the next epoch depends on (weights, optimiser moments, every RNG
stream, the offline-mined pool, the per-epoch history), so a trial resumed from epoch ``e`` takes
the same path as one that was never interrupted.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

import torch

from harness.errors import first_line

log = logging.getLogger(__name__)


class TrialCheckpoint:
    """One file, replaced whole each time: a crash mid-write leaves the previous epoch readable.

    ``uid`` is the study incarnation that wrote it: a study deleted and re-created reuses trial
    numbers, and a retry must never resume the old incarnation's trial of the same number.
    """

    def __init__(self, path: Path, uid: str | None = None) -> None:
        self.path = Path(path)
        self.uid = uid

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            torch.save(state | {"uid": self.uid}, tmp)
            os.replace(tmp, self.path)
        except RuntimeError as e:  # torch's zip writer reports a full disk as a RuntimeError
            full = _disk_full(self.path.parent)  # before the partial file is removed
            tmp.unlink(missing_ok=True)
            first = first_line(e, "write failed")
            if full:
                raise OSError(
                    errno.ENOSPC, f"No space left on device (torch.save: {first})", str(self.path)
                ) from e
            raise OSError(errno.EIO, f"cannot write the checkpoint ({first})", str(self.path)) from e
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk must not leave half a file behind
            raise

    def load(self) -> dict[str, Any] | None:
        """The stored state, or None when there is none or it cannot be read (then train from scratch)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or foreign file must not kill the retry
            log.warning("ignoring unreadable checkpoint %s (%s); training from epoch 1", self.path, e)
            return None
        if "uid" in state and state["uid"] != self.uid:  # no uid: written before uids, by this study
            log.warning(
                "ignoring checkpoint %s: written by study incarnation %s, not %s; training from epoch 1",
                self.path,
                state.get("uid"),
                self.uid,
            )
            return None
        return state

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _disk_full(folder: Path) -> bool:
    """Less than 1 MiB left for this user on the file system of ``folder``."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


def rng_state(
    gen: torch.Generator, dev_gen: torch.Generator, sampler_rng: Any, source: Any
) -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "gen": gen.get_state(),
        "dev_gen": dev_gen.get_state(),
        "sampler": sampler_rng.bit_generator.state,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if getattr(source, "generator", None) is not None:
        state["source"] = source.generator.get_state()
    return state


def set_rng_state(
    state: dict[str, Any], gen: torch.Generator, dev_gen: torch.Generator, sampler_rng: Any, source: Any
) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["gen"])
    dev_gen.set_state(state["dev_gen"])
    sampler_rng.bit_generator.state = state["sampler"]
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "source" in state and getattr(source, "generator", None) is not None:
        source.generator.set_state(state["source"])
