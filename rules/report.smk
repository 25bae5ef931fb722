# What the HTML report (snakemake --report report.html) shows besides the figures: config and versions.
# Written last, from every other target, so it records the config of results that exist (a run that
# fails leaves the previous record alone).


rule summarize_run:
    # What the run finds, in numbers, from the stages' own tables (results/summary.md; README's
    # "What the default run finds" block is copied from it by `python -m convergence.summary`).
    input:
        **summary_inputs(),
    output:
        md=f"{RESULTS}/summary.md",
        html=report(
            f"{RESULTS}/summary.html",
            caption="../report/summary.rst",
            category="Summary",
        ),
    log:
        f"{RESULTS}/logs/summary.log",
    benchmark:
        f"{RESULTS}/benchmarks/summarize_run/summary.tsv"
    conda:
        "../envs/convergence.yaml"
    script:
        "../scripts/summarize_run.py"


rule run_info:
    input:
        study_targets(),
        f"{RESULTS}/summary.md",
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
    benchmark:
        f"{RESULTS}/benchmarks/run_info/run_info.tsv"
    conda:
        "../envs/convergence.yaml"
    params:
        config=config,
    script:
        "../scripts/run_info.py"
