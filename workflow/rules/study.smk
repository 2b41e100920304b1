rule create_study:
    input:
        config="results/{study}/config.yaml",
        manifest="results/{study}/split_manifest.json",
    output:
        "results/{study}/study.json",
    log:
        "logs/create_study/{study}.log",
    conda:
        "../envs/harness.yaml"
    script:
        "../scripts/create_study.py"


rule study_worker:
    input:
        config="results/{study}/config.yaml",
        study="results/{study}/study.json",
    output:
        touch("results/{study}/workers/{worker}.done"),
    log:
        "logs/study_worker/{study}/{worker}.log",
    conda:
        "../envs/harness.yaml"
    resources:
        gpu=1,
    script:
        "../scripts/study_worker.py"


rule arm_worker:
    input:
        config="results/{study}/config.yaml",
        study="results/{study}/study.json",
    output:
        touch("results/{study}/arms/{arm}/workers/{worker}.done"),
    log:
        "logs/arm_worker/{study}/{arm}/{worker}.log",
    conda:
        "../envs/harness.yaml"
    resources:
        gpu=1,
    script:
        "../scripts/study_worker.py"
