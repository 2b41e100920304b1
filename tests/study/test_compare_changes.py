"""A comparison whose arm set changed, or one of whose arms lost its study (issue #19.3).

A finished tiny comparison (3 arms, evaluated and reported) is copied for each test and then
changed as a user would: one more arm or one fewer in the config, or one arm's journal deleted.
Every command must refuse in one line naming what changed or what is missing, count what the arms
hold, offer the ways on, and write nothing; the report must never rank an arm with the numbers of
an earlier incarnation of it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import yaml
from fixtures import make_cub
from helpers import ARMS, compare_config, one_error_line, snakemake
from helpers import COMPARE_NAME as NAME

from harness.cli import main
from harness.errors import HarnessError
from harness.study import parse_config
from harness.study.guard import refuse_changed, refuse_lost_arms


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the data, the config (results_dir: results, relative, as the pipeline wants)
    and a comparison that ran, was evaluated and reported."""
    tmp = tmp_path_factory.mktemp("finished")
    make_cub(tmp / "data", per_class=4, noise=60.0)
    raw = compare_config(Path("data") / "CUB_200_2011", Path("results"))
    (tmp / "c.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.MonkeyPatch.context() as m:
        m.chdir(tmp)
        for argv in (["study", "run"], ["evaluate"], ["report"]):
            assert main([*argv, "--config", "c.yaml"]) == 0, argv
    return tmp


@pytest.fixture
def copy(finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own copy of the finished comparison, as the working directory."""
    here = tmp_path / "work"
    shutil.copytree(finished, here, symlinks=True)
    monkeypatch.chdir(here)
    return here


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its content's digest: what 'nothing was written' compares."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def with_arms(arms: list[str]) -> Path:
    raw = yaml.safe_load(Path("c.yaml").read_text())
    raw["search_space"]["mining"] = {"choices": arms}
    path = Path("changed.yaml")
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


COMMANDS = [
    ["data", "prepare"],
    ["study", "create"],
    ["study", "run"],
    ["study", "worker"],
    ["study", "worker", "--arm", "semihard"],
    ["evaluate"],
    ["evaluate", "--arm", "semihard"],
    ["report"],
]


@pytest.mark.parametrize(
    "arms, words",
    [
        ([*ARMS, "batch-hard"], ["adds batch-hard"]),
        (ARMS[:2], ["removes offline-hard"]),
        ([*ARMS[:2], "hard"], ["adds hard", "removes offline-hard"]),
    ],
    ids=["added", "removed", "swapped"],
)
def test_every_command_refuses_a_changed_arm_set_in_one_line_and_writes_nothing(
    arms: list[str], words: list[str], copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = with_arms(arms)
    before = tree(copy)
    for argv in COMMANDS:
        msg = one_error_line(main([*argv, "--config", str(path)]), capsys.readouterr().err)
        for w in [*words, f"created with the arms {', '.join(ARMS)}", "9 finished trials", "semihard 3"]:
            assert w in msg, (argv, msg)
        assert "6 stored evaluation runs" in msg and "rename the study" in msg and "--force" in msg, msg
        assert tree(copy) == before, argv
    cfg = parse_config(yaml.safe_load(path.read_text()), str(path))  # Snakemake's check, at DAG time
    with pytest.raises(HarnessError, match="adds|removes"):
        refuse_changed(cfg)


def test_a_changed_arm_set_set_aside_with_delete_force_starts_a_new_comparison(
    copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The way on the message offers: every arm the old comparison had goes to the attic (the removed
    one too), and the new arm set runs from scratch."""
    path = with_arms(ARMS[:2])
    assert main(["study", "delete", "--config", str(path), "--force"]) == 0
    arms = copy / "results" / NAME / "arms"
    assert not any(arms.glob("*/optuna.journal")), list(arms.glob("*/optuna.journal"))
    (attic,) = (copy / "results" / NAME / "attic").iterdir()
    assert sorted(p.name for p in (attic / "arms").iterdir()) == sorted(ARMS)
    assert main(["study", "run", "--config", str(path)]) == 0


def lose_journal(arm: str) -> Path:
    journal = Path("results") / NAME / "arms" / arm / "optuna.journal"
    journal.unlink()
    return journal


def test_an_arm_whose_journal_is_gone_is_named_by_every_command_with_what_rerunning_costs(
    copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = lose_journal("random")
    before = tree(copy)
    for argv in (["study", "worker"], ["study", "worker", "--arm", "random"], ["evaluate"],
                 ["evaluate", "--arm", "random"], ["report"]):  # fmt: skip
        msg = one_error_line(main([*argv, "--config", "c.yaml"]), capsys.readouterr().err)
        assert f"arm 'random' of comparison '{NAME}' has no study" in msg, (argv, msg)
        assert str(journal) in msg and "restore it from a copy" in msg and "harness study create" in msg
        assert "runs 3 trials" in msg and "at the other arms' pace" in msg and "6 finished trials" in msg
        assert tree(copy) == before, argv  # nor an empty journal
    cfg = parse_config(yaml.safe_load(Path("c.yaml").read_text()), "c.yaml")
    with pytest.raises(HarnessError, match="arm 'random' .* has no study"):
        refuse_lost_arms(cfg)  # what the Snakefile runs before building its DAG


def test_snakemake_refuses_a_comparison_whose_arm_lost_its_journal(copy: Path) -> None:
    lose_journal("random")
    r = snakemake("-n", "--directory", str(copy), "--configfile", "c.yaml", cwd=copy)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "Nothing to be done" not in out
    assert "arm 'random' of comparison" in out and "has no study" in out, out[-3000:]


def test_an_arm_created_afresh_never_reaches_the_report_with_its_old_numbers(
    copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from harness.report.comparison import load_comparison

    lose_journal("random")
    arm_dir = Path("results") / NAME / "arms" / "random"
    assert main(["study", "create", "--config", "c.yaml"]) == 0
    assert "arm random had lost its study" in capsys.readouterr().err
    (attic,) = (arm_dir / "attic").iterdir()  # its old evaluation, trials and worker marks
    assert list((attic / "evaluation").glob("run-*.npz")) and (attic / "trials").is_dir()
    assert not (arm_dir / "evaluation").exists() and not (arm_dir / "trials").exists()
    cfg = parse_config(yaml.safe_load(Path("c.yaml").read_text()), "c.yaml")
    d = load_comparison(cfg)  # the new arm has no trial yet; test.csv still holds the old one's rows
    assert d.test is None and d.comparisons is None
    assert any("earlier incarnation of arm(s) random" in n for n in d.notes), d.notes
    assert main(["report", "--config", "c.yaml"]) == 0
    page = (Path("results") / NAME / "report" / "index.html").read_text()
    assert "earlier incarnation of arm(s) random" in page
    for argv in (["study", "run"], ["evaluate"], ["report"]):  # the way on: everything current again
        assert main([*argv, "--config", "c.yaml"]) == 0, argv
    d = load_comparison(cfg)
    assert d.test is not None and set(d.test["arm"].dropna()) == set(ARMS)
    assert not any("earlier incarnation" in n for n in d.notes), d.notes


def test_a_missing_journal_is_not_created_by_looking_at_it(copy: Path) -> None:
    from harness.study.arms import arm_config
    from harness.study.identity import load_study

    journal = lose_journal("semihard")
    cfg = parse_config(yaml.safe_load(Path("c.yaml").read_text()), "c.yaml")
    with pytest.raises(HarnessError, match="does not exist"):
        load_study(arm_config(cfg, "semihard"))
    assert not journal.exists() and os.listdir(journal.parent)
