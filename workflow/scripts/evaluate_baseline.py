# A comparison's no-training baseline on the test classes (its arms run their own configs).
from harness.pipeline import run_rule
from harness.study.config import load_config
from harness.study.steps import evaluate_baseline

run_rule(snakemake, lambda: evaluate_baseline(load_config(snakemake.input.config)))  # noqa: F821
