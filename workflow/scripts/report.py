# Build the study's HTML comparison report (and log it to MLflow).
from harness.pipeline import rule_logging
from harness.report import build_report
from harness.study.config import load_config

rule_logging(snakemake.log[0])  # noqa: F821
build_report(load_config(snakemake.input.config))  # noqa: F821
