# Build the study's HTML report (and log it to MLflow).
from harness.pipeline import run_rule
from harness.report import build_report
from harness.study.config import load_config

run_rule(snakemake, lambda: build_report(load_config(snakemake.input.config)))  # noqa: F821
