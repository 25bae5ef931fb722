rule sample_dataset:
    output:
        samples=f"{RESULTS}/datasets/{{dataset}}/samples.parquet",
        images=directory(f"{RESULTS}/datasets/{{dataset}}/images"),
    params:
        spec=dataset_spec,
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/convergence.yaml"
    log:
        f"{RESULTS}/logs/datasets/{{dataset}}.log",
    script:
        "../scripts/sample_dataset.py"
