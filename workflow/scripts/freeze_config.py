# Write the validated study config next to its results: the input every later rule reads.
from pathlib import Path

from harness.pipeline import rule_logging
from harness.study.config import parse_config, write_config

rule_logging(snakemake.log[0])  # noqa: F821
write_config(parse_config(snakemake.params.cfg), Path(snakemake.output[0]))  # noqa: F821
