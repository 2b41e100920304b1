# One arm of a comparison: its best validation config re-trained with every seed, scored on test.
from harness.pipeline import run_rule
from harness.study.config import load_config
from harness.study.steps import evaluate

arm = snakemake.wildcards.arm  # noqa: F821
run_rule(snakemake, lambda: evaluate(load_config(snakemake.input.config), arm=arm))  # noqa: F821
