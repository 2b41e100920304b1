"""The partial trunk's activation cache on a full disk: one error line, nothing left behind."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest


def test_a_full_disk_while_activations_are_reserved_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.data.cache import create_npy

    calls: list[int] = []

    def full(fd: int, offset: int, length: int) -> None:
        calls.append(length)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    target = tmp_path / "acts.npy.part"
    with pytest.raises(OSError) as info:
        create_npy(target, np.float16, (1000, 64, 4, 4))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert calls and calls[0] >= 1000 * 64 * 16 * 2
    assert not target.exists()
