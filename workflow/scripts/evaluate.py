# Re-train the top validation configs on all train classes; evaluate them on the test classes.
from harness.pipeline import rule_logging
from harness.study.config import load_config
from harness.study.final import evaluate_study

rule_logging(snakemake.log[0], snakemake.threads)  # noqa: F821
evaluate_study(load_config(snakemake.input.config))  # noqa: F821
