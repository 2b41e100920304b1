# One worker job: workers_per_gpu worker processes sharing its device, running trials against the
# storage of its study (or of one arm of a comparison) until that budget is met.
from harness.pipeline import run_rule
from harness.study.config import load_config
from harness.study.steps import work

path, w, threads = snakemake.input.config, snakemake.wildcards, snakemake.threads  # noqa: F821
run_rule(snakemake, lambda: work(load_config(path), path, int(w.worker), threads, w.get("arm")))  # noqa: F821
