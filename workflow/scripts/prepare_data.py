# Resolve (or download) the dataset, build the decoded-image and trunk-feature caches, write the split.
from harness.pipeline import rule_logging
from harness.study.config import load_config
from harness.study.data import prepare

rule_logging(snakemake.log[0], snakemake.threads)  # noqa: F821
prepare(load_config(snakemake.input[0]), allow_download=True)  # noqa: F821
