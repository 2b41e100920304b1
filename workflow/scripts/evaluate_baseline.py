# A comparison's no-training baseline on the test classes (its arms run their own configs).
from harness.pipeline import rule_logging
from harness.study.config import load_config
from harness.study.steps import evaluate_baseline

rule_logging(snakemake.log[0], snakemake.threads)  # noqa: F821
evaluate_baseline(load_config(snakemake.input.config))  # noqa: F821
