rule extract_activations:
    input:
        samples=f"{RESULTS}/datasets/{{dataset}}/samples.parquet",
        weights=model_weights,
    output:
        directory(f"{RESULTS}/activations/{{dataset}}/{{model}}.zarr"),
    log:
        f"{RESULTS}/logs/extract/{{dataset}}/{{model}}.log",
    conda:
        "../envs/convergence.yaml"
    threads: extract_threads
    resources:
        mem_mb=model_mem_mb,
        runtime=120,
        gpu=model_gpus,
    params:
        spec=extract_spec,  # only what this store depends on, of this model only
        chunk_size=config["extract"]["chunk_size"],
        resources_dir=RESOURCES,
        zoo_dir=ZOO,
    script:
        "../scripts/extract_activations.py"
