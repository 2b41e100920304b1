# Gather the evaluation shards into test.csv, comparisons.csv, test_runs.csv (runs any run missing).
from harness.pipeline import rule_logging
from harness.study.config import load_config
from harness.study.final import evaluate_study

rule_logging(snakemake.log[0], snakemake.threads)  # noqa: F821
evaluate_study(load_config(snakemake.input.config))  # noqa: F821
