# One arm of a comparison: its best validation config re-trained with every seed, scored on test.
from harness.pipeline import rule_logging
from harness.study.config import load_config
from harness.study.steps import evaluate

rule_logging(snakemake.log[0], snakemake.threads)  # noqa: F821
evaluate(load_config(snakemake.input.config), arm=snakemake.wildcards.arm)  # noqa: F821
