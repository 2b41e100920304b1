# Helpers shared by the rules: which studies to build, and each study's validated config.
from harness.study.config import load_config, parse_config
from harness.study.guard import refuse_changed


def _load_studies(config):
    if "name" in config:  # --configfile studies/<name>.yaml: that one study
        cfgs = [parse_config(config, "--configfile")]
    else:
        cfgs = [load_config(path) for path in config.get("studies", [])]
    for cfg in cfgs:
        if cfg.results_dir != "results":
            raise ValueError(f"study {cfg.name}: the pipeline writes under results/; drop results_dir")
        # Before any job: Snakemake deletes a job's old outputs (the frozen config) before running it.
        refuse_changed(cfg)
    return {cfg.name: cfg for cfg in cfgs}


STUDIES = _load_studies(config)


def study_config(wildcards):
    """The study config as the user wrote it (as params: editing it re-runs the jobs; a default
    added to the code later does not)."""
    return STUDIES[wildcards.study].user


def worker_outputs(wildcards):
    n = STUDIES[wildcards.study].workers
    return expand("results/{study}/workers/{worker}.done", study=wildcards.study, worker=range(n))


def evaluation_shards(wildcards):
    n = STUDIES[wildcards.study].evaluate.jobs
    return expand("results/{study}/evaluation/shard-{shard}.done", study=wildcards.study, shard=range(n))
