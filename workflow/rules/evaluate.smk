rule evaluate_shard:
    input:
        config="results/{study}/config.yaml",
        workers=worker_outputs,
    output:
        touch("results/{study}/evaluation/shard-{shard}.done"),
    log:
        "logs/evaluate_shard/{study}/{shard}.log",
    conda:
        "../envs/harness.yaml"
    resources:
        gpu=1,
    script:
        "../scripts/evaluate_shard.py"


rule evaluate_arm:
    input:
        config="results/{study}/config.yaml",
        workers=arm_worker_outputs,
    output:
        "results/{study}/arms/{arm}/test_runs.csv",
    log:
        "logs/evaluate_arm/{study}/{arm}.log",
    conda:
        "../envs/harness.yaml"
    resources:
        gpu=1,
    script:
        "../scripts/evaluate_arm.py"


rule evaluate_baseline:
    input:
        config="results/{study}/config.yaml",
        study="results/{study}/study.json",
    output:
        touch("results/{study}/evaluation/baseline.done"),
    log:
        "logs/evaluate_baseline/{study}.log",
    conda:
        "../envs/harness.yaml"
    resources:
        gpu=1,
    script:
        "../scripts/evaluate_baseline.py"


rule evaluate:
    input:
        config="results/{study}/config.yaml",
        runs=evaluation_inputs,
    output:
        "results/{study}/test.csv",
    log:
        "logs/evaluate/{study}.log",
    conda:
        "../envs/harness.yaml"
    script:
        "../scripts/evaluate.py"
