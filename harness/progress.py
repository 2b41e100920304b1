"""Progress of long steps as log lines with counts, rate and ETA, for the console and the logs.

Snakemake shows a job's console output, not its log file, so the rule scripts send these lines to
both (``pipeline.rule_logging``). A line is written at most every ``every`` seconds, and at the end.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("harness.progress")


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    def __init__(self, what: str, total: int, unit: str = "items", every: float = 10.0) -> None:
        self.what, self.total, self.unit, self.every = what, max(int(total), 0), unit, every
        self.done = 0
        self.start = self.last = time.perf_counter()
        log.info("%s: %d %s", what, self.total, unit)

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        now = time.perf_counter()
        if self.done >= self.total or now - self.last >= self.every:
            self.last = now
            log.info("%s", self.line(note))

    def line(self, note: str = "") -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        share = f" ({100 * self.done / self.total:.0f} %)" if self.total else ""
        if self.done >= self.total:
            tail = f"done in {duration(elapsed)}"
        else:
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            tail = f"ETA {duration(eta)}" if eta == eta else "ETA unknown"
        if rate >= 100:
            speed = f"{rate:,.0f} {self.unit}/s"
        elif rate >= 1 or rate == 0:
            speed = f"{rate:,.1f} {self.unit}/s"
        else:  # runs of minutes: "0.0 runs/s" says nothing, the time per run does
            speed = f"{duration(1 / rate)} per {self.unit.removesuffix('s')}"
        extra = f"; {note}" if note else ""
        return f"{self.what}: {self.done:,}/{self.total:,} {self.unit}{share}, {speed}, {tail}{extra}"
