# One worker job: workers_per_gpu worker processes sharing its device, running trials against the
# storage of its study (or of one arm of a comparison) until that budget is met.
from harness.pipeline import rule_logging
from harness.study.config import load_config
from harness.study.steps import work

rule_logging(snakemake.log[0], snakemake.threads)  # noqa: F821
cfg = load_config(snakemake.input.config)  # noqa: F821
w = snakemake.wildcards  # noqa: F821
work(cfg, snakemake.input.config, int(w.worker), snakemake.threads, w.get("arm"))  # noqa: F821
