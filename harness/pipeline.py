"""Logging set-up shared by the CLI and the Snakemake scripts."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
NOISY = ("alembic", "mlflow", "urllib3", "matplotlib", "PIL")


def setup_logging(stream: TextIO | None = None, verbose: bool = False) -> None:
    logging.basicConfig(
        stream=stream, level=logging.DEBUG if verbose else logging.INFO, format=FORMAT, force=True
    )
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    import optuna

    # Optuna's own handler is bound to the stderr of import time; route its messages through ours.
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


def rule_logging(log_path: str, threads: int | None = None) -> None:
    """For a Snakemake script: everything it prints or logs goes to the rule's log file."""
    handle = open(log_path, "a", buffering=1)
    sys.stderr = sys.stdout = handle
    setup_logging(handle)
    if threads:
        import torch

        torch.set_num_threads(threads)
