# Create the Optuna study and the MLflow parent run once, before the workers fan out.
from harness.pipeline import rule_logging
from harness.study.config import load_config
from harness.study.lifecycle import create

rule_logging(snakemake.log[0])  # noqa: F821
create(load_config(snakemake.input.config))  # noqa: F821
