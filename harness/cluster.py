"""Will every job of a SLURM profile start? Checked before anything is submitted.

SLURM keeps a job that asks for more than any node of its partition has (CPUs, memory, GPUs, time)
PENDING with reason PartitionConfig, forever, and the snakemake executor plugin says nothing about
it: the pipeline just sits there. ``harness cluster check`` reads the profile's sizes (default and
per-rule resources) and compares them with what ``sinfo`` reports for each partition, and names
every rule that could never start (or that sbatch would refuse: a ``gpu_model`` no node has), with
the number to change. (Clusters with
``EnforcePartLimits=ALL`` refuse such jobs at submission instead; most keep SLURM's default NO.)
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from harness.errors import HarnessError

# The rules that become SLURM jobs (the rest are localrules), as in workflow/rules/*.smk.
JOB_RULES = (
    "prepare_data",
    "study_worker",
    "arm_worker",
    "evaluate_shard",
    "evaluate_arm",
    "evaluate_baseline",
)


@dataclass(frozen=True)
class Partition:
    name: str
    cpus: int  # per node, the largest node
    memory_mb: int
    gpus: int
    time_limit_min: float  # inf: no limit
    gpu_types: frozenset[str] = frozenset()  # GRES types ("a100"); empty when the GPUs are untyped


@dataclass(frozen=True)
class Ask:
    rule: str
    partition: str
    cpus: int
    memory_mb: int
    gpus: int
    runtime_min: float
    threads: int
    gpu_model: str = ""  # what the executor plugin submits as --gpus=<model>:<n>


def profile_asks(profile: Path) -> list[Ask]:
    """What each job rule asks for under the profile (its set-resources over the defaults)."""
    path = profile / "config.yaml" if profile.is_dir() else profile
    if not path.is_file():
        raise HarnessError(f"no SLURM profile at {path}; pass --profile workflow/profiles/slurm (or -cpu)")
    cfg = yaml.safe_load(path.read_text()) or {}
    default = cfg.get("default-resources") or {}
    per_rule = cfg.get("set-resources") or {}
    threads = cfg.get("set-threads") or {}
    out = []
    for rule in JOB_RULES:
        r = {**default, **(per_rule.get(rule) or {})}
        out.append(
            Ask(
                rule=rule,
                partition=str(r.get("slurm_partition", "")),
                cpus=int(r.get("cpus_per_task", 1)),
                memory_mb=int(r.get("mem_mb", 0)),
                gpus=int(r.get("gpu", r.get("gpus", 0)) or 0),
                runtime_min=float(r.get("runtime", 0)),
                threads=int(threads.get(rule, r.get("cpus_per_task", 1))),
                gpu_model=str(r.get("gpu_model") or ""),
            )
        )
    return out


def _minutes(limit: str) -> float:
    """sinfo's time limit ("infinite", "1-00:00:00", "2:00:00", "30:00") in minutes."""
    if limit in ("infinite", "UNLIMITED", "n/a"):
        return float("inf")
    days, _, rest = limit.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, s = parts
    return (int(days or 0) * 24 + h) * 60 + m + s / 60


def _gpus(gres: str) -> tuple[int, frozenset[str]]:
    """GPUs per node and their types from sinfo's GRES ("gpu:a100:4(S:0-1)", "gpu:2", "(null)")."""
    total, types = 0, set()
    for item in gres.split(","):
        m = re.match(r"gpu(?::([^:(]+))?:(\d+)", item.strip())
        if m:
            total += int(m.group(2))
            if m.group(1):
                types.add(m.group(1))
    return total, frozenset(types)


def partitions(sinfo: str = "sinfo") -> dict[str, Partition]:
    if shutil.which(sinfo) is None:
        raise HarnessError("sinfo not found: run 'harness cluster check' on a node of the SLURM cluster")
    out = subprocess.run([sinfo, "-h", "-o", "%R|%c|%m|%G|%l"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        why = out.stderr.strip().splitlines()[0] if out.stderr.strip() else f"exit {out.returncode}"
        raise HarnessError(f"sinfo failed ({why}); is this a node of the SLURM cluster?")
    found: dict[str, Partition] = {}
    for line in out.stdout.splitlines():
        name, cpus, mem, gres, limit = line.split("|")
        gpus, types = _gpus(gres)
        p = Partition(name, int(cpus.rstrip("+")), int(mem.rstrip("+")), gpus, _minutes(limit), types)
        old = found.get(name)
        if old is not None:  # the largest node; GPU types of any node of the partition
            if (p.cpus, p.memory_mb, p.gpus) <= (old.cpus, old.memory_mb, old.gpus):
                p = old
            p = replace(p, gpu_types=types | old.gpu_types)
        found[name] = p
    return found


def problems(asks: list[Ask], parts: dict[str, Partition]) -> list[str]:
    out = []
    for a in asks:
        p = parts.get(a.partition)
        if p is None:
            known = ", ".join(parts)
            out.append(
                f"{a.rule}: partition {a.partition!r} does not exist (sinfo: {known}); set slurm_partition"
            )
            continue
        where = f"partition {p.name}'s nodes"
        if a.cpus > p.cpus:
            out.append(
                f"{a.rule}: cpus_per_task {a.cpus} > the {p.cpus} CPUs of {where}; lower it and set-threads"
            )
        if a.memory_mb > p.memory_mb:
            out.append(f"{a.rule}: mem_mb {a.memory_mb} > the {p.memory_mb} MB of {where}; lower mem_mb")
        if a.gpus > p.gpus:
            fix = "use profiles/slurm-cpu" if p.gpus == 0 else f"ask for at most {p.gpus}"
            out.append(f"{a.rule}: gpu {a.gpus} > the {p.gpus} GPUs of {where}; {fix}")
        elif a.gpus and a.gpu_model and a.gpu_model not in p.gpu_types:
            have = ", ".join(sorted(p.gpu_types)) or "no GPU type"
            fix = "set gpu_model to one of them" if p.gpu_types else "remove gpu_model"
            out.append(
                f"{a.rule}: gpu_model {a.gpu_model!r} is not a GPU type of {where} ({have});"
                f" sbatch refuses --gpus={a.gpu_model}:{a.gpus}: {fix}"
            )
        if a.runtime_min > p.time_limit_min:
            limit = f"{p.time_limit_min:g}"
            out.append(
                f"{a.rule}: runtime {a.runtime_min:g} min > partition {p.name}'s {limit} min; lower runtime"
            )
        if a.threads > a.cpus:
            out.append(f"{a.rule}: set-threads {a.threads} > cpus_per_task {a.cpus}: it would oversubscribe")
    return out


def check(profile: Path, sinfo: str = "sinfo") -> list[str]:
    """Every job rule that could not start under ``profile`` on this cluster, one line each."""
    return problems(profile_asks(profile), partitions(sinfo))
