rule extract_activations:
    input:
        samples=f"{RESULTS}/datasets/{{dataset}}/samples.parquet",
        weights=model_weights,
    output:
        directory(f"{RESULTS}/activations/{{dataset}}/{{model}}.zarr"),
    log:
        f"{RESULTS}/logs/extract/{{dataset}}/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract_activations/{{dataset}}/{{model}}.tsv"
    conda:
        "../envs/convergence.yaml"
    threads: 1  # 2 threads speed an LM extraction up 1.29x on 2 cores; --set-threads for bigger nodes
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
