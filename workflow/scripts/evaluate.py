# Gather the evaluation into test.csv, comparisons.csv, test_runs.csv (a comparison's: also arms.csv;
# any run still missing is run here).
from harness.pipeline import rule_logging
from harness.study.config import load_config
from harness.study.steps import evaluate

rule_logging(snakemake.log[0], snakemake.threads)  # noqa: F821
evaluate(load_config(snakemake.input.config))  # noqa: F821
