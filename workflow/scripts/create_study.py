# Create the Optuna study (a comparison: and each arm's) and the MLflow parent run, before workers fan out.
from harness.pipeline import run_rule
from harness.study.config import load_config
from harness.study.lifecycle import create

run_rule(snakemake, lambda: create(load_config(snakemake.input.config)))  # noqa: F821
