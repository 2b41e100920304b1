# Helpers shared by the rules: which studies to build, and each study's validated config.
from harness.study.config import load_config, parse_config
from harness.study.guard import refuse_changed, refuse_lost_arms
from harness.tracking.reachable import check_reachable
from harness.models.weights import check as check_weights


def _load_studies(config):
    if "name" in config:  # --configfile studies/<name>.yaml: that one study
        cfgs = [parse_config(config, "--configfile")]
    else:
        cfgs = [load_config(path) for path in config.get("studies", [])]
    for cfg in cfgs:
        if cfg.results_dir != "results":
            raise ValueError(
                f"study {cfg.name}: results_dir applies to the harness command line; the pipeline writes"
                " under results/ of its working directory: drop results_dir and run snakemake with"
                " --directory DIR (or make results/ a link) to put everything elsewhere"
            )
        # Before any job: Snakemake deletes a job's old outputs (the frozen config) before running it.
        refuse_changed(cfg)
        refuse_lost_arms(cfg)  # an arm whose study is gone: its old outputs would say nothing is to do
        check_reachable(cfg.tracking_uri)  # before the data is prepared, not after
        for wanted in cfg.weights_wanted():  # every arm's and baseline's: offline and not cached, one line
            check_weights(*wanted)
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


def arm_worker_outputs(wildcards):
    n = STUDIES[wildcards.study].workers
    return expand(
        "results/{study}/arms/{arm}/workers/{worker}.done",
        study=wildcards.study,
        arm=wildcards.arm,
        worker=range(n),
    )


def evaluation_inputs(wildcards):
    """A study's evaluation shards; a comparison's arms and its baseline."""
    cfg = STUDIES[wildcards.study]
    if cfg.compare is None:
        return evaluation_shards(wildcards)
    arms = expand("results/{study}/arms/{arm}/test_runs.csv", study=wildcards.study, arm=cfg.arm_units)
    return arms + [f"results/{wildcards.study}/evaluation/baseline.done"]


def arm_worker_jobs(wildcards):
    """Every worker job of every arm (for the DAG's rule all, via the study's evaluation)."""
    cfg = STUDIES[wildcards.study]
    return expand(
        "results/{study}/arms/{arm}/workers/{worker}.done",
        study=wildcards.study,
        arm=cfg.arm_units,
        worker=range(cfg.workers),
    )


def joint_reports():
    """With joint_report: true (workflow/compare.yaml), one page over all the studies given."""
    if not config.get("joint_report") or len(STUDIES) < 2:
        return []
    names = "+".join(STUDIES)
    return expand("results/report/{names}/index.html", names=names)


def joint_configs(wildcards):
    return expand("results/{study}/config.yaml", study=wildcards.names.split("+"))


def joint_tests(wildcards):
    return expand("results/{study}/test.csv", study=wildcards.names.split("+"))
