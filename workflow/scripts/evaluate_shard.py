# One shard of the final evaluation (evaluate.jobs shards run as parallel jobs where resources allow).
from harness.pipeline import run_rule
from harness.study.config import load_config
from harness.study.steps import evaluate

shard = int(snakemake.wildcards.shard)  # noqa: F821
run_rule(snakemake, lambda: evaluate(load_config(snakemake.input.config), shard=shard))  # noqa: F821
