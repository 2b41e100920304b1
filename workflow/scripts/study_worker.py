# One worker job: workers_per_gpu worker processes sharing its device, running trials against the
# study storage until the study's budget is met.
from harness.pipeline import rule_logging
from harness.study.config import load_config
from harness.study.worker import run_worker_group

rule_logging(snakemake.log[0], snakemake.threads)  # noqa: F821
cfg = load_config(snakemake.input.config)  # noqa: F821
run_worker_group(cfg, snakemake.input.config, int(snakemake.wildcards.worker), snakemake.threads)  # noqa: F821
