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
    threads: 2
    resources:
        gpu=1,
    script:
        "../scripts/evaluate_shard.py"


rule evaluate:
    input:
        config="results/{study}/config.yaml",
        shards=evaluation_shards,
    output:
        "results/{study}/test.csv",
    log:
        "logs/evaluate/{study}.log",
    conda:
        "../envs/harness.yaml"
    threads: 2
    resources:
        gpu=1,
    script:
        "../scripts/evaluate.py"
