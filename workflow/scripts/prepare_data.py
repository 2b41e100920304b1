# Resolve (or download) the dataset, build the decoded-image and trunk caches, write the split.
from harness.pipeline import run_rule
from harness.study.config import load_config
from harness.study.data import prepare

run_rule(snakemake, lambda: prepare(load_config(snakemake.input[0]), allow_download=True))  # noqa: F821
