rule evaluate:
    input:
        config="results/{study}/config.yaml",
        workers=worker_outputs,
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
