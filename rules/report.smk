# What the HTML report (snakemake --report report.html) shows besides the figures: config and versions.
# Written last, from every other target, so it records the config of results that exist (a run that
# fails leaves the previous record alone).


rule run_info:
    input:
        study_targets(),
    output:
        config=report(
            f"{RESULTS}/run_info/config.yaml",
            caption="../report/run_info.rst",
            category="Run",
        ),
        versions=report(
            f"{RESULTS}/run_info/versions.json",
            caption="../report/run_info.rst",
            category="Run",
        ),
    log:
        f"{RESULTS}/logs/run_info.log",
    conda:
        "../envs/convergence.yaml"
    params:
        config=config,
    script:
        "../scripts/run_info.py"
