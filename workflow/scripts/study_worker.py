# One worker: run trials against the shared storage until the study's budget is met.
from harness.pipeline import rule_logging
from harness.study.config import load_config
from harness.study.runner import run_worker

rule_logging(snakemake.log[0], snakemake.threads)  # noqa: F821
run_worker(load_config(snakemake.input.config), int(snakemake.wildcards.worker))  # noqa: F821
