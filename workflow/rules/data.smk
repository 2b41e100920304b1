rule freeze_config:
    output:
        "results/{study}/config.yaml",
    params:
        cfg=study_config,
    log:
        "logs/freeze_config/{study}.log",
    conda:
        "../envs/harness.yaml"
    script:
        "../scripts/freeze_config.py"


rule prepare_data:
    input:
        "results/{study}/config.yaml",
    output:
        "results/{study}/split_manifest.json",
    log:
        "logs/prepare_data/{study}.log",
    conda:
        "../envs/harness.yaml"
    resources:
        gpu=1,
    script:
        "../scripts/prepare_data.py"
