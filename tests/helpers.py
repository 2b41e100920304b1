"""What several test modules share: the tiny study configs, the commands they run (snakemake, a
browser), the CLI's one-error-line contract, and stand-ins for changed files. Data fixtures are in
``fixtures.py``; killed-process helpers in ``processes.py``; the SLURM cluster in ``slurm.py``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from processes import patience, run_group

if TYPE_CHECKING:
    import optuna

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # the real datasets (../shared/data), where this checkout has them


NAME = "tiny"


def tiny_config(root: Path, results: Path, n_trials: int = 4) -> dict:
    return {
        "name": NAME,
        "dataset": "cub",
        "data_root": str(root),
        "strict_counts": False,
        "results_dir": str(results),
        "backbone": "test_efficientnet",
        "pretrained": False,
        "trunk": "frozen",
        "image_size": 32,
        "cache_size": None,
        "epochs": 2,
        "budget": {"n_trials": n_trials},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "evaluate": {"top_n": 2, "seed": 0, "seeds": 2},
        "search_space": {
            # margin is searched (not fixed) so the report draws its R@1-vs-margin figure too
            "margin": {"low": 0.1, "high": 0.3},
            "mining": {"choices": ["semihard", "offline-hard", "random"]},
            "distance": {"choices": ["cosine", "euclidean"]},
            "batch_p": {"choices": [4]},
            "batch_k": {"choices": [2]},
            "embedding_dim": 16,
        },
    }


CHECK = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0}));
  const tables = Object.fromEntries([...document.querySelectorAll("table[id]")].map(
    t => [t.id.replace(/^table-/, ""), t.tBodies.length ? t.tBodies[0].rows.length : 0]));
  const overflow = [...document.querySelectorAll("div.scroll")].filter(
    d => d.scrollWidth > d.clientWidth + 1).map(d => d.querySelector("table").id);
  const out = document.createElement("pre");
  out.id = "harness-check";
  out.textContent = JSON.stringify({images, tables, overflow, width: window.innerWidth});
  document.body.appendChild(out);
});
</script>"""


def chromium(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        if os.environ.get("HARNESS_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium not found (apt-get install chromium)")
        pytest.skip("chromium not installed")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--virtual-time-budget=10000",
    ]
    with tempfile.TemporaryDirectory() as profile:
        # chromium forks a zygote and renderers: its whole group ends with the call
        return run_group([exe, *flags, f"--user-data-dir={profile}", *args], timeout=patience(120))


SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


def snakemake(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    # snakemake's jobs are processes of its group: they end with it, also on a timeout
    return run_group([*SNAKEMAKE, *args], timeout=patience(600), cwd=cwd)


def one_error_line(code: int, stderr: str) -> str:
    """Assert the CLI's error contract; return the message after ``error: ``."""
    lines = stderr.splitlines()
    assert code == 2, stderr
    assert len(lines) == 1, f"expected one stderr line, got {lines}"
    assert lines[0].startswith("error: ")
    return lines[0].removeprefix("error: ")


def read_only(results: Path, cmd: list[str]) -> list[str]:
    """Run ``cmd`` with ``results`` read-only: as root (which ignores modes) on a read-only bind mount
    in a private mount namespace, so only this process sees it; otherwise by clearing write bits."""
    if os.geteuid() == 0:
        script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && shift && exec "$@"'
        return ["unshare", "-m", "sh", "-c", script, str(results), "--", *cmd]
    for p in [results, *results.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    return cmd


def error_line(code: int, stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert code != 0, stderr
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return errors[0].removeprefix("error: ")


def same_size_stand_in(images, target: int) -> bytes:
    """The bytes of an image of ANOTHER class, padded to the target's byte size (JPEG decoders stop
    at the end-of-image marker, so the padding is never read)."""
    size = images.absolute(target).stat().st_size
    label = images.labels[target]
    for i in range(len(images)):
        data = images.absolute(i).read_bytes()
        if images.labels[i] != label and len(data) <= size:
            return data + b"\0" * (size - len(data))
    raise AssertionError("no smaller image of another class in the fixture")


COMPARE_NAME = "tinycmp"


ARMS = ["semihard", "random", "offline-hard"]


def compare_config(root: Path, results: Path, n_trials: int = 3, **over: object) -> dict:
    raw = tiny_config(root, results, n_trials=n_trials)
    raw |= {"name": COMPARE_NAME, "compare": "mining", "val_folds": 2, "epochs": 2, "evaluate": {"seeds": 2}}
    raw["sampler"] = {"name": "tpe", "seed": 0, "n_startup_trials": 2}
    raw["search_space"] = raw["search_space"] | {
        "mining": {"choices": ARMS},
        "lr": {"low": 1e-4, "high": 1e-2, "log": True},
    }
    return raw | over


@dataclass
class RanComparison:
    """A comparison a module fixture ran once: its temp folder, its config file and what it wrote."""

    tmp: Path
    path: Path
    raw: dict = field(default_factory=dict)

    @property
    def cfg(self):  # noqa: ANN201 (a StudyConfig)
        from harness.study import parse_config

        return parse_config(yaml.safe_load(self.path.read_text()), str(self.path))

    @property
    def dir(self) -> Path:
        return self.tmp / "results" / COMPARE_NAME


def stop_in(number: int, epoch: int, stop) -> object:  # noqa: ANN001
    """A train() that calls ``stop()`` after ``epoch`` of trial ``number``'s first run (its
    checkpoint of that epoch written)."""
    import harness.study.objective

    real = harness.study.objective.train

    def train(*args: object, **kw: object) -> object:
        on_epoch, on_checkpoint = kw["on_epoch"], kw["on_checkpoint"]
        run = on_epoch.__self__  # type: ignore[union-attr]

        def checkpointed(state: dict) -> None:
            on_checkpoint(state)  # type: ignore[operator]
            if run.trial.number == number and int(state["epoch"]) == epoch:
                stop()

        return real(*args, **(kw | {"on_checkpoint": checkpointed}))

    return train


# --- a short study on the tiny dataset, for the tests of a study's life on disk -----------------


def study_file(root: Path, tmp: Path, **over: object) -> Path:
    """A 2-trial, 1-epoch study config on ``root`` written to ``tmp/s.yaml``."""
    raw = tiny_config(root, tmp / "results", n_trials=2) | {"epochs": 1} | over
    path = tmp / "s.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def write(tmp: Path, raw: dict, name: str = "study.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def config(data_root: Path, tmp: Path, n_trials: int = 3, **over: object) -> dict:
    """The tiny config with 1 epoch and a searched learning rate."""
    raw = tiny_config(data_root, tmp / "results", n_trials=n_trials)
    raw["epochs"] = 1
    raw["search_space"] = raw["search_space"] | {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}
    return raw | over


def journal(results: Path, name: str = NAME) -> Path:
    return results / name / "optuna.journal"


def study_of(results: Path, name: str = NAME):  # noqa: ANN201
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(journal(results, name))))
    return optuna.load_study(study_name=name, storage=storage)


def params_of(study) -> list[tuple]:  # noqa: ANN001
    return [tuple(sorted(t.params.items())) for t in study.get_trials(deepcopy=False)]


def finished(data_root: Path, tmp_path: Path, n_trials: int) -> tuple[dict, Path]:
    """A study whose ``n_trials`` trials have run; returns its config and the config's path."""
    from harness.cli import main

    raw = config(data_root, tmp_path, n_trials=n_trials)
    path = write(tmp_path, raw)
    assert main(["study", "run", "--config", str(path)]) == 0
    return raw, path


# --- a study's draws, counted from its journal ---------------------------------------------------


def by_draw(study: optuna.Study) -> dict[int, tuple]:
    """Each finished draw: (params, state, value), keyed by its draw index. Counted here from the
    journal, independently of the harness: a fresh trial's index is the number of fresh trials before
    it; a retry (``failed_trial`` set) finishes the draw of the trial its chain started from."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    fresh = [t.number for t in trials if "failed_trial" not in t.system_attrs]
    out: dict[int, tuple] = {}
    for t in trials:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            draw = fresh.index(int(t.system_attrs.get("failed_trial", t.number)))
            out[draw] = (tuple(sorted(t.params.items())), t.state, t.value, t.user_attrs["seed"])
    return out


def retried(study: optuna.Study) -> list[int]:
    return [t.number for t in study.get_trials(deepcopy=False) if "failed_trial" in t.system_attrs]
