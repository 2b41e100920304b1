# Triplet-loss benchmark pipeline: data -> study (workers) -> evaluate -> report, per study.
#   snakemake --cores 2                                     # every study in workflow/config.yaml
#   snakemake --cores 2 --configfile studies/<name>.yaml    # just that study
from snakemake.utils import min_version

min_version("8.20")


configfile: "workflow/config.yaml"


include: "workflow/rules/common.smk"


wildcard_constraints:
    study="|".join(STUDIES) or "none",
    worker=r"\d+",
    shard=r"\d+",


include: "workflow/rules/data.smk"
include: "workflow/rules/study.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        expand("results/{study}/report/index.html", study=list(STUDIES)),
    default_target: True
