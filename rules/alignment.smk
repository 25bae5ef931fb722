# Kernel alignment (PRH): one job per (dataset, metric, model pair), then one aggregate per (dataset, metric).
from convergence.config import alignment_datasets, model_pairs, models_on

ALIGN = config["alignment"]


wildcard_constraints:
    metric=_alternatives(ALIGN["metrics"]),
    a=_alternatives(config["models"]),
    b=_alternatives(config["models"]),


def alignment_pair_files(wildcards):
    return [
        f"{RESULTS}/alignment/{wildcards.dataset}/{wildcards.metric}/{a}__{b}.parquet"
        for a, b in model_pairs(config, wildcards.dataset)
    ]


def dataset_stores(wildcards):
    return [f"{RESULTS}/activations/{wildcards.dataset}/{m}.zarr" for m in models_on(config, wildcards.dataset)]


def alignment_targets():
    return [
        f"{RESULTS}/alignment/{dataset}/{metric}{suffix}"
        for dataset in alignment_datasets(config)
        for metric in ALIGN["metrics"]
        for suffix in (".csv", ".png", "_layers.png", "_scale.png")
    ]


rule align_pair:
    input:
        a=f"{RESULTS}/activations/{{dataset}}/{{a}}.zarr",
        b=f"{RESULTS}/activations/{{dataset}}/{{b}}.zarr",
    output:
        f"{RESULTS}/alignment/{{dataset}}/{{metric}}/{{a}}__{{b}}.parquet",
    params:
        metric=lambda wc: ALIGN["metrics"][wc.metric],  # only this metric's parameters: others never rerun
        options={k: ALIGN[k] for k in ("normalize", "clip_quantile", "n_boot", "n_perm", "ci", "seed")},
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
    conda:
        "../envs/convergence.yaml"
    log:
        f"{RESULTS}/logs/alignment/{{dataset}}/{{metric}}/{{a}}__{{b}}.log",
    script:
        "../scripts/align_pair.py"


rule aggregate_alignment:
    input:
        pairs=alignment_pair_files,
        stores=dataset_stores,
    output:
        table=f"{RESULTS}/alignment/{{dataset}}/{{metric}}.csv",
        heatmap=f"{RESULTS}/alignment/{{dataset}}/{{metric}}.png",
        layers=f"{RESULTS}/alignment/{{dataset}}/{{metric}}_layers.png",
        scale=f"{RESULTS}/alignment/{{dataset}}/{{metric}}_scale.png",
    params:
        models=lambda wc: models_on(config, wc.dataset),
        reference=ALIGN["reference"],
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../envs/convergence.yaml"
    log:
        f"{RESULTS}/logs/alignment/{{dataset}}/{{metric}}_aggregate.log",
    script:
        "../scripts/aggregate_alignment.py"
