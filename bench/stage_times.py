"""Per-rule job times of one Snakemake run, summed: the stage tables of docs/comparing.md.

    .venv/bin/python bench/stage_times.py .snakemake/log/<run>.snakemake.log > stages.csv

Reads the log Snakemake writes (or its console output): each job's start is the timestamp before
its ``rule NAME:`` block (``jobid: N`` inside it), its end the timestamp before ``Finished jobid: N``.
Prints one CSV row per rule in the order the rules first finished: the number of jobs, their seconds
summed, and each job's seconds. Jobs that never finished (a killed run) are left out and counted on
stderr.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
_RULE = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")
_JOBID = re.compile(r"^\s+jobid: (\d+)$")
_FINISHED = re.compile(r"^Finished job(?:id)?:? (\d+)")


def job_seconds(lines: Iterable[str]) -> tuple[dict[str, list[int]], int]:
    """Seconds of each finished job, by rule; and how many jobs started but never finished."""
    stamp: datetime | None = None
    opened: tuple[str, datetime] | None = None  # a rule block whose jobid is still to come
    started: dict[str, tuple[str, datetime]] = {}
    seconds: dict[str, list[int]] = {}
    for line in lines:
        line = line.rstrip("\n")
        if m := _STAMP.match(line):
            stamp = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        elif (m := _RULE.match(line)) and stamp is not None:
            opened = (m.group(1), stamp)
        elif (m := _JOBID.match(line)) and opened is not None:
            started[m.group(1)], opened = opened, None
        elif (m := _FINISHED.match(line)) and m.group(1) in started and stamp is not None:
            rule, began = started.pop(m.group(1))
            seconds.setdefault(rule, []).append(round((stamp - began).total_seconds()))
    return seconds, len(started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path, help="a Snakemake log (.snakemake/log/*.snakemake.log)")
    args = parser.parse_args()
    if not args.log.is_file():
        print(f"stage_times: no such log: {args.log}", file=sys.stderr)
        return 2
    seconds, unfinished = job_seconds(args.log.read_text().splitlines())
    print("rule,jobs,job_seconds_total,job_seconds_each")
    for rule, each in seconds.items():
        print(f"{rule},{len(each)},{sum(each)},{' '.join(map(str, each))}")
    if unfinished:
        print(f"stage_times: {unfinished} job(s) started and never finished, left out", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
