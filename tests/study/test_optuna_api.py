"""Optuna's private names the harness relies on (harness.study.optuna_api): all present in the
installed Optuna, and no other module reaches into Optuna's private API."""

from __future__ import annotations

import re

import optuna
from helpers import REPO
from packaging.specifiers import SpecifierSet

from harness.study import optuna_api

PACKAGE = REPO / "harness"


def test_every_private_name_is_there() -> None:
    assert optuna_api.missing() == [], (
        f"Optuna {optuna.__version__} moved or renamed these; adapt harness/study/optuna_api.py"
    )


def test_the_installed_optuna_is_one_the_adapter_was_tested_with() -> None:
    assert optuna.__version__ in SpecifierSet(optuna_api.TESTED), (
        f"Optuna {optuna.__version__} is outside {optuna_api.TESTED}: run the suite, then widen TESTED"
    )


def test_the_adapter_is_the_only_module_with_optuna_private_names() -> None:
    private = re.compile(r"optuna\.[\w.]*\._\w+|\._trial_id\b|\._storage\b|\._file_path\b|get_lock_file")
    offenders = {
        str(p.relative_to(PACKAGE)): private.findall(p.read_text())
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.name != "optuna_api.py"
    }
    assert {k: v for k, v in offenders.items() if v} == {}
