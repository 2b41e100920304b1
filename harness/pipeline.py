"""Logging set-up shared by the CLI and the Snakemake scripts."""

from __future__ import annotations

import contextlib
import faulthandler
import io
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
NOISY = ("alembic", "mlflow", "urllib3", "matplotlib", "PIL", "sqlalchemy", "timm")


class LibraryOneLine(logging.Filter):
    """A library's own error log keeps its first line and loses its traceback (MLflow logs a page of
    SQL per failed write on a full disk): the harness reports the failure itself, in one line, and
    ``-v`` keeps everything."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".", 1)[0] in NOISY and (record.exc_info or "\n" in str(record.msg)):
            record.msg = (
                str(record.getMessage()).strip().splitlines()[0] if record.getMessage().strip() else ""
            )
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


def quiet_libraries() -> None:
    """Our handlers, and the ones a library installs for itself (MLflow prints through its own), keep
    one line of a library's error. Called again after such a library is imported."""
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in NOISY)]
    for handler in (h for lg in loggers for h in lg.handlers):
        if not any(isinstance(f, LibraryOneLine) for f in handler.filters):
            handler.addFilter(LibraryOneLine())


def setup_logging(stream: TextIO | None = None, verbose: bool = False) -> None:
    logging.basicConfig(
        stream=stream, level=logging.DEBUG if verbose else logging.INFO, format=FORMAT, force=True
    )
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    if not verbose:
        quiet_libraries()
    if "optuna" in sys.modules:
        route_optuna_logging()


def route_optuna_logging() -> None:
    """Optuna's own handler is bound to the stderr of import time; route its messages through ours.

    Called where Optuna is imported, so that validating a config does not import it."""
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


def stacks_on_sigusr1(file: TextIO) -> None:
    """``kill -USR1 PID`` writes every thread's Python stack to ``file`` (a job's log, or the CLI's
    stderr), and the process goes on: what a hung worker or evaluation is waiting for, without
    stopping it. A stream without a file descriptor (a test's captured stderr) is left alone."""
    with contextlib.suppress(AttributeError, ValueError, io.UnsupportedOperation, OSError, RuntimeError):
        faulthandler.register(signal.SIGUSR1, file=file, all_threads=True)


def rule_logging(log_path: str, threads: int | None = None) -> None:
    """For a Snakemake script: everything it prints or logs goes to the rule's log file; progress
    lines (counts and ETA), warnings and errors also go to the console Snakemake shows."""
    console = sys.stderr
    handle = open(log_path, "a", buffering=1)
    sys.stderr = sys.stdout = handle
    setup_logging(handle)
    stacks_on_sigusr1(handle)
    job = Path(log_path).with_suffix("").as_posix().removeprefix("logs/")
    shown = logging.StreamHandler(console)
    shown.setFormatter(logging.Formatter(f"%(asctime)s [{job}] %(message)s", "%H:%M:%S"))
    shown.addFilter(lambda r: r.name == "harness.progress" or r.levelno >= logging.WARNING)
    shown.addFilter(LibraryOneLine())
    logging.getLogger().addHandler(shown)
    if threads:
        import torch

        torch.set_num_threads(threads)


def run_rule(smk: Any, step: Callable[[], object]) -> None:
    """Run a Snakemake rule script's one step: its log set up (``rule_logging``), and every way it
    can fail ended as the CLI ends it: one line (in the log and on the console, no traceback unless
    HARNESS_DEBUG=1) and the CLI's exit code, so a cancelled job (SIGTERM) or a full disk reads the
    same under Snakemake and SLURM as at a terminal."""
    rule_logging(smk.log[0], getattr(smk, "threads", None))
    try:
        step()
    except (Exception, KeyboardInterrupt) as e:
        from harness.errors import failure

        code, line = failure(e, verbose=os.environ.get("HARNESS_DEBUG") == "1")
        logging.getLogger("harness").error(
            "%s", line, exc_info=code == 1 and os.environ.get("HARNESS_DEBUG") == "1"
        )
        logging.shutdown()
        sys.exit(code)
