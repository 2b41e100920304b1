"""Logging set-up shared by the CLI and the Snakemake scripts."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
NOISY = ("alembic", "mlflow", "urllib3", "matplotlib", "PIL")


def setup_logging(stream: TextIO | None = None, verbose: bool = False) -> None:
    logging.basicConfig(
        stream=stream, level=logging.DEBUG if verbose else logging.INFO, format=FORMAT, force=True
    )
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    if "optuna" in sys.modules:
        route_optuna_logging()


def route_optuna_logging() -> None:
    """Optuna's own handler is bound to the stderr of import time; route its messages through ours.

    Called where Optuna is imported, so that validating a config does not import it."""
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


def rule_logging(log_path: str, threads: int | None = None) -> None:
    """For a Snakemake script: everything it prints or logs goes to the rule's log file; progress
    lines (counts and ETA), warnings and errors also go to the console Snakemake shows."""
    console = sys.stderr
    handle = open(log_path, "a", buffering=1)
    sys.stderr = sys.stdout = handle
    setup_logging(handle)
    job = Path(log_path).with_suffix("").as_posix().removeprefix("logs/")
    shown = logging.StreamHandler(console)
    shown.setFormatter(logging.Formatter(f"%(asctime)s [{job}] %(message)s", "%H:%M:%S"))
    shown.addFilter(lambda r: r.name == "harness.progress" or r.levelno >= logging.WARNING)
    logging.getLogger().addHandler(shown)
    if threads:
        import torch

        torch.set_num_threads(threads)
