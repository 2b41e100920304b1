# Helpers shared by the rules: which studies to build, and each study's validated config.
from harness.study.config import load_config, parse_config


def _load_studies(config):
    if "name" in config:  # --configfile studies/<name>.yaml: that one study
        cfgs = [parse_config(config, "--configfile")]
    else:
        cfgs = [load_config(path) for path in config.get("studies", [])]
    for cfg in cfgs:
        if cfg.results_dir != "results":
            raise ValueError(f"study {cfg.name}: the pipeline writes under results/; drop results_dir")
    return {cfg.name: cfg for cfg in cfgs}


STUDIES = _load_studies(config)


def study_config(wildcards):
    """The study's validated config as a plain dict (as params, a changed config re-runs the job)."""
    return STUDIES[wildcards.study].to_dict()


def worker_outputs(wildcards):
    n = STUDIES[wildcards.study].workers
    return expand("results/{study}/workers/{worker}.done", study=wildcards.study, worker=range(n))
