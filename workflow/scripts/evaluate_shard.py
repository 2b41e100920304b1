# One shard of the final evaluation (evaluate.jobs shards run as parallel jobs where resources allow).
from harness.pipeline import rule_logging
from harness.study.config import load_config
from harness.study.steps import evaluate

rule_logging(snakemake.log[0], snakemake.threads)  # noqa: F821
evaluate(load_config(snakemake.input.config), shard=int(snakemake.wildcards.shard))  # noqa: F821
