# Kernel alignment (PRH): one job per (dataset, metric, model pair), then one aggregate per (dataset, metric).


rule align_pair:
    input:
        a=f"{RESULTS}/activations/{{dataset}}/{{a}}.zarr",
        b=f"{RESULTS}/activations/{{dataset}}/{{b}}.zarr",
    output:
        f"{RESULTS}/alignment/{{dataset}}/{{metric}}/{{a}}__{{b}}.parquet",
    log:
        f"{RESULTS}/logs/alignment/{{dataset}}/{{metric}}/{{a}}__{{b}}.log",
    conda:
        "../envs/convergence.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        metric=lambda wc: ALIGN["metrics"][wc.metric],  # only this metric's parameters: others never rerun
        options={
            k: ALIGN[k]
            for k in ("normalize", "clip_quantile", "n_boot", "n_perm", "ci", "seed")
        },
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
    log:
        f"{RESULTS}/logs/alignment/{{dataset}}/{{metric}}_aggregate.log",
    conda:
        "../envs/convergence.yaml"
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        models=lambda wc: models_on(config, wc.dataset),
        reference=ALIGN["reference"],
    script:
        "../scripts/aggregate_alignment.py"
