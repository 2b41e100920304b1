"""Glue for the Snakemake scripts: route a rule's logging to its log file, set its threads."""

from __future__ import annotations

import logging
import sys


def rule_logging(log_path: str, threads: int | None = None) -> None:
    handle = open(log_path, "a", buffering=1)
    sys.stderr = sys.stdout = handle
    logging.basicConfig(
        stream=handle, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if threads:
        import torch

        torch.set_num_threads(threads)
