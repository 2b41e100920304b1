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
