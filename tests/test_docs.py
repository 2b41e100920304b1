"""The docs site builds with --strict (a missing page or anchor fails it), and its config reference
is made from the code (issue #20, item 1)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

from harness.params import TABLE
from harness.study.config import schema
from harness.study.reference import config_reference

MKDOCS = [
    sys.executable,
    "-m",
    "mkdocs",
    "build",
    "--strict",
]  # not --quiet: it hides the warnings --strict counts


def build(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [*MKDOCS, "-f", str(root / "mkdocs.yml"), "-d", str(site)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_docs_site_builds_strictly(tmp_path: Path) -> None:
    r = build(REPO, tmp_path / "site")
    assert r.returncode == 0, r.stdout + r.stderr
    page = (tmp_path / "site" / "reference" / "config" / "index.html").read_text()
    assert "val_folds" in page and "refresh_every" in page  # the generated reference is on the site


@pytest.mark.parametrize("link", ["[a page](no-such-page.md)", "[an anchor](studies.md#no-such-anchor)"])
def test_a_broken_link_fails_the_build(link: str, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    shutil.copytree(REPO / "docs", root / "docs")
    shutil.copy(REPO / "mkdocs.yml", root / "mkdocs.yml")
    with (root / "docs" / "data.md").open("a") as f:
        f.write(f"\nSee {link}.\n")
    r = build(root, tmp_path / "site")
    assert r.returncode != 0 and "data.md" in r.stdout + r.stderr, r.stdout + r.stderr


def test_the_config_reference_names_every_key_and_parameter_with_a_description() -> None:
    text = config_reference()
    props = schema()["properties"]
    for key, prop in props.items():
        assert f"| `{key}` |" in text or f"## `{key}`" in text, key
        if key != "search_space":
            assert prop.get("description"), f"schema.json: {key} has no description"
        for sub, p in prop.get("properties", {}).items() if key != "search_space" else ():
            assert f"| `{sub}` |" in text and p.get("description"), f"{key}.{sub}"
    for p in TABLE.values():
        assert f"| `{p.name}` |" in text and p.doc, f"search_space.{p.name} has no doc in harness/params.py"
