# Gather the evaluation into test.csv, comparisons.csv, test_runs.csv (a comparison's: also arms.csv;
# any run still missing is run here).
from harness.pipeline import run_rule
from harness.study.config import load_config
from harness.study.steps import evaluate

run_rule(snakemake, lambda: evaluate(load_config(snakemake.input.config)))  # noqa: F821
