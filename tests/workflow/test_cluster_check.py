"""``harness cluster check`` without a cluster: a fake ``sinfo`` prints what SLURM prints.

The real check against a running one-node cluster is in tests/workflow/test_slurm.py (slow, root)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from harness.cluster import check, partitions, problems, profile_asks


def _sinfo(tmp_path: Path, lines: list[str], code: int = 0, err: str = "") -> str:
    """An executable that prints ``lines`` as ``sinfo -h -o '%R|%c|%m|%G|%l'`` would."""
    exe = tmp_path / "sinfo"
    body = "".join(f"echo '{line}'\n" for line in lines)
    exe.write_text(f"#!/bin/sh\n{body}echo '{err}' >&2\nexit {code}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(exe)


def _profile(tmp_path: Path, name: str = "profile", **rule_resources: object) -> Path:
    cfg = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())
    cfg["default-resources"]["slurm_partition"] = "gpu"
    for res in cfg["set-resources"].values():
        res |= rule_resources
    path = tmp_path / name / "config.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(cfg))
    return path.parent


def test_partitions_read_the_largest_node_and_every_gpu_type(tmp_path: Path) -> None:
    sinfo = _sinfo(
        tmp_path,
        [
            "gpu|32|256000|gpu:a100:4(S:0-1)|2-00:00:00",
            "gpu|64|512000|gpu:h100:8(S:0-1)|2-00:00:00",
            "cpu|128+|1000000|(null)|infinite",
        ],
    )
    parts = partitions(sinfo)
    assert parts["gpu"].cpus == 64 and parts["gpu"].memory_mb == 512000 and parts["gpu"].gpus == 8
    assert parts["gpu"].gpu_types == {"a100", "h100"}
    assert parts["gpu"].time_limit_min == 2 * 24 * 60
    assert parts["cpu"].cpus == 128 and parts["cpu"].gpus == 0 and parts["cpu"].time_limit_min == float("inf")


def test_the_shipped_profile_fits_an_a100_node(tmp_path: Path) -> None:
    sinfo = _sinfo(tmp_path, ["gpu|32|256000|gpu:a100:4|2-00:00:00"])
    assert check(_profile(tmp_path), sinfo) == []


def test_each_size_that_could_never_start_is_named_with_its_fix(tmp_path: Path) -> None:
    sinfo = _sinfo(tmp_path, ["gpu|2|8000|gpu:v100:1|1:00:00"])
    found = check(_profile(tmp_path), sinfo)
    text = "\n".join(found)
    assert "study_worker: cpus_per_task 4 > the 2 CPUs of partition gpu's nodes" in text, text
    assert "study_worker: mem_mb 16000 > the 8000 MB of partition gpu's nodes; lower mem_mb" in text
    assert "runtime 720 min > partition gpu's 60 min; lower runtime" in text
    assert "gpu_model 'a100' is not a GPU type of partition gpu's nodes (v100)" in text
    assert "--gpus=a100:1" in text and "set gpu_model to one of them" in text


def test_untyped_gpus_take_no_gpu_model_and_gpuless_nodes_the_cpu_profile(tmp_path: Path) -> None:
    from harness.cluster import Partition

    untyped = partitions(_sinfo(tmp_path, ["gpu|32|256000|gpu:4|2-00:00:00"]))
    shipped = problems(profile_asks(_profile(tmp_path)), untyped)
    assert shipped
    assert all("(no GPU type); sbatch refuses" in x and "remove gpu_model" in x for x in shipped), shipped
    no_model = profile_asks(_profile(tmp_path, "no-model", gpu_model=""))
    assert problems(no_model, untyped) == []
    no_gpu = {"gpu": Partition("gpu", 32, 256000, 0, float("inf"))}
    assert any("use profiles/slurm-cpu" in line for line in problems(no_model, no_gpu))


def test_sinfo_failing_is_one_line(tmp_path: Path) -> None:
    from harness.errors import HarnessError

    broken = _sinfo(tmp_path, [], code=1, err="slurm_load_partitions: Unable to contact slurm controller")
    with pytest.raises(HarnessError, match="sinfo failed .Unable to contact|sinfo failed \\(slurm_load"):
        partitions(broken)
