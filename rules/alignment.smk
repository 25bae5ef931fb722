# Kernel alignment (PRH): one job per (dataset, metric, model pair), then one aggregate per (dataset, metric).


rule align_pair:
    input:
        a=f"{RESULTS}/activations/{{dataset}}/{{a}}.zarr",
        b=f"{RESULTS}/activations/{{dataset}}/{{b}}.zarr",
    output:
        f"{RESULTS}/alignment/{{dataset}}/{{metric}}/{{a}}__{{b}}.parquet",
    log:
        f"{RESULTS}/logs/alignment/{{dataset}}/{{metric}}/{{a}}__{{b}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/align_pair/{{dataset}}/{{metric}}/{{a}}__{{b}}.tsv"
    conda:
        "../envs/convergence.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        metric=lambda wc: ALIGN["metrics"][wc.metric],  # only this metric's parameters: others never rerun
        options={k: ALIGN[k] for k in PAIR_OPTIONS},
        sweep=lambda wc: sweep_options(config, wc.a, wc.b),  # only this pair's: a subset change reruns those
    script:
        "../scripts/align_pair.py"


rule aggregate_alignment:
    input:
        pairs=alignment_pair_files,
        stores=dataset_stores,
    output:
        table=f"{RESULTS}/alignment/{{dataset}}/{{metric}}.csv",
        heatmap=report(
            f"{RESULTS}/alignment/{{dataset}}/{{metric}}.png",
            caption="../report/alignment_heatmap.rst",
            category="Alignment",
            subcategory="{dataset}: {metric}",
        ),
        layers=report(
            f"{RESULTS}/alignment/{{dataset}}/{{metric}}_layers.png",
            caption="../report/alignment_layers.rst",
            category="Alignment",
            subcategory="{dataset}: {metric}",
        ),
        scale=report(
            f"{RESULTS}/alignment/{{dataset}}/{{metric}}_scale.png",
            caption="../report/alignment_scale.rst",
            category="Alignment",
            subcategory="{dataset}: {metric}",
        ),
        claims=f"{RESULTS}/alignment/{{dataset}}/{{metric}}_claims.csv",
        claims_figure=report(
            f"{RESULTS}/alignment/{{dataset}}/{{metric}}_claims.png",
            caption="../report/alignment_claims.rst",
            category="Alignment",
            subcategory="{dataset}: {metric}",
        ),
        nsweep=f"{RESULTS}/alignment/{{dataset}}/{{metric}}_nsweep.csv",
        nsweep_figure=report(
            f"{RESULTS}/alignment/{{dataset}}/{{metric}}_nsweep.png",
            caption="../report/alignment_nsweep.rst",
            category="Alignment",
            subcategory="{dataset}: {metric}",
        ),
    log:
        f"{RESULTS}/logs/alignment/{{dataset}}/{{metric}}_aggregate.log",
    benchmark:
        f"{RESULTS}/benchmarks/aggregate_alignment/{{dataset}}/{{metric}}_aggregate.tsv"
    conda:
        "../envs/convergence.yaml"
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        models=lambda wc: models_on(config, wc.dataset),
        reference=ALIGN["reference"],
        controls=lambda wc: dataset_controls(config, wc.dataset),
        alpha=ALIGN["alpha"],
    script:
        "../scripts/aggregate_alignment.py"
