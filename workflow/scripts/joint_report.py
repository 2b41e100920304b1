# One page over several studies (make compare: the CUB and Cars comparisons, arms ranked across them).
from pathlib import Path

from harness.pipeline import run_rule
from harness.report import build_report
from harness.study.config import load_config

paths, out = snakemake.input.configs, Path(snakemake.output[0]).parent  # noqa: F821
run_rule(snakemake, lambda: build_report([load_config(p) for p in paths], out))  # noqa: F821
