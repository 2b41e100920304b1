rule report:
    input:
        config="results/{study}/config.yaml",
        test="results/{study}/test.csv",
    output:
        report(
            "results/{study}/report/index.html",
            caption="../report/study.rst",
            category="Study reports",
        ),
    log:
        "logs/report/{study}.log",
    conda:
        "../envs/harness.yaml"
    script:
        "../scripts/report.py"


rule joint_report:
    input:
        configs=joint_configs,
        tests=joint_tests,
    output:
        "results/report/{names}/index.html",
    log:
        "logs/report/{names}.log",
    conda:
        "../envs/harness.yaml"
    script:
        "../scripts/joint_report.py"
