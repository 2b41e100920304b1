"""Compute the wheels the GPU image lacks: the project's runtime closure, resolved by pip for the
image's Python and platform, minus what the image already has. No hand-written package list.

    python bench/gpu_bundle.py                 # resolve, write bench/gpu-bundle.lock, download .whl/
    python bench/gpu_bundle.py --resolve-only  # only (re)write the lock file

1. The runtime requirements are ``[project].dependencies`` of pyproject.toml, less the packages
   that only the Snakemake workflow and cluster storage need (WORKFLOW_ONLY; the device script runs
   the harness CLI directly). The optional extras (EXTRAS_NOT_BUNDLED) are not bundled either.
2. torch and torchvision come from the image, at the image's versions: pip resolves against
   metadata-only stand-ins of those versions, so their CUDA dependencies (already in the image)
   are not pulled in, and every other package is resolved against the torch it will meet.
3. ``pip install --dry-run --report`` resolves the closure for CPython 3.12 on manylinux x86-64
   (binary wheels only); the packages named in ``image-packages.txt`` are subtracted.
4. ``bench/gpu-bundle.lock`` records the result (name==version and the wheel's URL) with a hash of
   the requirements it came from: a test fails when pyproject.toml changes and the lock does not.
5. The wheels are downloaded with ``pip download --no-deps`` into ``.whl/`` (git-ignored), for the
   device tool's ``carry``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
PYTHON = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64")
WORKFLOW_ONLY = {"snakemake", "snakemake-executor-plugin-slurm", "psycopg2-binary"}
# The optional extras' packages, imported lazily by the harness and never by the device script, so
# they stay out of the bundle: faiss-cpu (``faiss``, kNN backend "faiss": on a GPU the torch backend
# runs there, and its 18 MB wheel would crowd the device tool's 64 MiB carry, most of it taken by the
# EfficientNet weights) and pyarrow (``parquet``, a .parquet image list). Neither is a
# [project].dependencies entry, so the requirements hash (and the lock) do not change with them.
EXTRAS_NOT_BUNDLED = {"faiss-cpu", "pyarrow"}
# The image's own builds (../shared/gpu/README.md): resolved against, never downloaded. The local
# version "+image" makes pip take the metadata-only stand-in, not PyPI's wheel of the same release.
IMAGE_PINNED = {"torch": "2.11.0+image", "torchvision": "0.26.0+image"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    assert match, req
    return normalize(match.group(1))


def runtime_requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    out = []
    for req in deps:
        name = requirement_name(req)
        if name in WORKFLOW_ONLY:
            continue
        out.append(f"{name}=={IMAGE_PINNED[name]}" if name in IMAGE_PINNED else req)
    return out


def requirements_hash(reqs: list[str]) -> str:
    body = json.dumps({"requirements": sorted(reqs), "python": PYTHON, "image": IMAGE_PINNED}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def image_packages(path: Path) -> set[str]:
    return {normalize(line.strip()) for line in path.read_text().splitlines() if line.strip()}


def _stub_wheel(folder: Path, name: str, version: str) -> None:
    """A wheel with metadata only: tells the resolver "this version is installed", pulls in nothing."""
    dist = f"{name.replace('-', '_')}-{version}"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    wheel = "Wheel-Version: 1.0\nGenerator: gpu_bundle\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as z:
        z.writestr(f"{dist}.dist-info/METADATA", meta)
        z.writestr(f"{dist}.dist-info/WHEEL", wheel)
        z.writestr(f"{dist}.dist-info/RECORD", "")


def _platform_args() -> list[str]:
    args = ["--only-binary=:all:", "--python-version", PYTHON, "--implementation", "cp", "--abi", "cp312"]
    for p in PLATFORMS:
        args += ["--platform", p]
    return args


def resolve(reqs: list[str]) -> list[dict]:
    """pip's resolution of ``reqs`` for the image's Python and platform: [{name, version, url}]."""
    with tempfile.TemporaryDirectory() as tmp:
        stubs = Path(tmp) / "stubs"
        stubs.mkdir()
        for name, version in IMAGE_PINNED.items():
            _stub_wheel(stubs, name, version)
        report = Path(tmp) / "report.json"
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--dry-run",
            "--ignore-installed",
            "--report",
            str(report),
            "--target",
            str(Path(tmp) / "target"),
            "--find-links",
            str(stubs),
            *_platform_args(),
            *reqs,
        ]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"pip could not resolve the runtime closure:\n{run.stderr[-3000:]}")
        installs = json.loads(report.read_text())["install"]
    return [
        {
            "name": normalize(x["metadata"]["name"]),
            "version": x["metadata"]["version"],
            "url": x["download_info"]["url"],
        }
        for x in installs
    ]


def plan(reqs: list[str], image: set[str]) -> tuple[list[dict], list[str]]:
    """(packages to bring, packages the image provides), both from one resolution."""
    closure = resolve(reqs)
    bring = [p for p in closure if p["name"] not in image and p["name"] not in IMAGE_PINNED]
    provided = sorted(p["name"] for p in closure if p["name"] in image or p["name"] in IMAGE_PINNED)
    return sorted(bring, key=lambda p: p["name"]), provided


def write_lock(path: Path, reqs: list[str], bring: list[dict], provided: list[str]) -> None:
    lines = [
        "# The wheels the GPU image lacks (bench/gpu_bundle.py; do not edit by hand).",
        f"# requirements-hash: {requirements_hash(reqs)}",
        f"# python: {PYTHON}; platforms: {', '.join(PLATFORMS)}",
        f"# from the image: {', '.join(provided)}",
        *[f"{p['name']}=={p['version']}  {p['url'].rsplit('/', 1)[-1]}" for p in bring],
    ]
    path.write_text("\n".join(lines) + "\n")


def read_lock(path: Path) -> tuple[str, dict[str, str], list[str]]:
    """(requirements hash, {name: version} to bring, names from the image)."""
    text = path.read_text().splitlines()
    digest = next(line.split(": ", 1)[1] for line in text if line.startswith("# requirements-hash:"))
    provided = next(line.split(": ", 1)[1] for line in text if line.startswith("# from the image:"))
    bring = {}
    for line in text:
        if line and not line.startswith("#"):
            name, version = line.split()[0].split("==")
            bring[name] = version
    return digest, bring, [p.strip() for p in provided.split(",") if p.strip()]


def stale_wheels(folder: Path, bring: dict[str, str]) -> list[Path]:
    """Wheels in ``folder`` the lock no longer names (another version, or a dropped package): left
    there, the device's ``pip install .whl/*.whl`` would see two versions of one package and fail."""
    stale = []
    for whl in sorted(folder.glob("*.whl")):
        name, version = whl.name.split("-")[:2]
        if bring.get(normalize(name)) != version:
            stale.append(whl)
    return stale


def download(bring: dict[str, str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for whl in stale_wheels(out, bring):
        whl.unlink()
        print(f"removed {whl.name}: not in the lock")
    pins = [f"{n}=={v}" for n, v in sorted(bring.items())]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "-d",
        str(out),
        *_platform_args(),
        *pins,
    ]
    subprocess.run(cmd, check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", default=str(REPO.parent / "shared" / "gpu" / "image-packages.txt"))
    p.add_argument("--lock", default=str(REPO / "bench" / "gpu-bundle.lock"))
    p.add_argument("--out", default=str(REPO / ".whl"))
    p.add_argument("--resolve-only", action="store_true")
    a = p.parse_args()
    reqs = runtime_requirements()
    bring, provided = plan(reqs, image_packages(Path(a.image)))
    write_lock(Path(a.lock), reqs, bring, provided)
    print(f"{len(bring)} packages to bring, {len(provided)} from the image -> {a.lock}")
    if a.resolve_only:
        return
    exclude = REPO / ".git" / "info" / "exclude"
    if exclude.parent.is_dir() and "/.whl/" not in (exclude.read_text() if exclude.exists() else ""):
        with exclude.open("a") as f:
            f.write("/.whl/\n")
    download({x["name"]: x["version"] for x in bring}, Path(a.out))
    size = sum(f.stat().st_size for f in Path(a.out).glob("*.whl"))
    print(f"downloaded {len(list(Path(a.out).glob('*.whl')))} wheels, {size / 2**20:.1f} MiB -> {a.out}")


if __name__ == "__main__":
    main()
