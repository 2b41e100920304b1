# One shard of the final evaluation (evaluate.jobs shards run as parallel jobs where resources allow).
from harness.pipeline import rule_logging
from harness.study.config import load_config
from harness.study.final import evaluate_shard

rule_logging(snakemake.log[0], snakemake.threads)  # noqa: F821
evaluate_shard(load_config(snakemake.input.config), int(snakemake.wildcards.shard))  # noqa: F821
