# Triplet-loss benchmark pipeline: data -> study (workers, or a comparison's arms) -> evaluate -> report.
#   snakemake --cores 2                                     # every study in workflow/config.yaml
#   snakemake --cores 2 --configfile studies/<name>.yaml    # just that study
#   snakemake --cores 2 --configfile workflow/compare.yaml  # the CUB and Cars comparisons, one report
from snakemake.utils import min_version

min_version("8.20")


configfile: "workflow/config.yaml"


include: "workflow/rules/common.smk"


wildcard_constraints:
    study="|".join(STUDIES) or "none",
    worker=r"\d+",
    shard=r"\d+",
    arm=r"[A-Za-z0-9_.-]+(@r[0-9]+)?",
    names=r"[A-Za-z0-9_.+-]+",


# Small steps run where snakemake runs, not as cluster jobs: they write a file or gather tables.
localrules:
    freeze_config,
    create_study,
    evaluate,
    report,
    joint_report,


include: "workflow/rules/data.smk"
include: "workflow/rules/study.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        expand("results/{study}/report/index.html", study=list(STUDIES)),
        joint_reports(),
    default_target: True
