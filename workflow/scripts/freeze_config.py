# Write the validated study config next to its results: the input every later rule reads. A config
# the stored study would refuse is refused here, before anything is overwritten.
from pathlib import Path

from harness.pipeline import run_rule
from harness.study.config import parse_config
from harness.study.lifecycle import freeze

out = Path(snakemake.output[0])  # noqa: F821
run_rule(snakemake, lambda: freeze(parse_config(snakemake.params.cfg), out))  # noqa: F821
