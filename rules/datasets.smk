rule fetch_dataset_source:
    # An image-caption collection fetched at run time, never committed: an installed copy, a .deb placed
    # in resources/datasets/, or `apt-get download`; the .deb's sha256 is checked before dpkg-deb -x.
    output:
        directory(f"{RESOURCES}/datasets/{{source}}"),
    log:
        f"{RESULTS}/logs/datasets/fetch_{{source}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/fetch_dataset_source/fetch_{{source}}.tsv"
    conda:
        "../envs/convergence.yaml"
    resources:
        mem_mb=1000,
        runtime=30,
    script:
        "../scripts/fetch_dataset_source.py"


rule sample_dataset:
    input:
        unpack(dataset_inputs),
    output:
        samples=f"{RESULTS}/datasets/{{dataset}}/samples.parquet",
        images=directory(f"{RESULTS}/datasets/{{dataset}}/images"),
    log:
        f"{RESULTS}/logs/datasets/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample_dataset/{{dataset}}.tsv"
    # First of all jobs (priority): the checks that need the data (columns, n, decodable images) fail
    # here, before minutes are spent elsewhere.
    priority: 100
    conda:
        "../envs/convergence.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        spec=dataset_spec,
        resources_dir=RESOURCES,
    script:
        "../scripts/sample_dataset.py"
