rule sample_dataset:
    output:
        samples=f"{RESULTS}/datasets/{{dataset}}/samples.parquet",
        images=directory(f"{RESULTS}/datasets/{{dataset}}/images"),
    log:
        f"{RESULTS}/logs/datasets/{{dataset}}.log",
    conda:
        "../envs/convergence.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        spec=dataset_spec,
    script:
        "../scripts/sample_dataset.py"
