# One page over several studies (make compare: the CUB and Cars comparisons, arms ranked across them).
from pathlib import Path

from harness.pipeline import rule_logging
from harness.report import build_report
from harness.study.config import load_config

rule_logging(snakemake.log[0])  # noqa: F821
configs = [load_config(path) for path in snakemake.input.configs]  # noqa: F821
build_report(configs, Path(snakemake.output[0]).parent)  # noqa: F821
