# Inductive OOCR: per (task, seed) data; per (task, model, seed) a LoRA fine-tune and three evaluations
# (fine-tuned with an empty context, untuned, in-context learning); one summary table and a figure per task.


rule oocr_data:
    output:
        f"{RESULTS}/oocr/{{task}}/seed{{seed}}/data.json",
    log:
        f"{RESULTS}/logs/oocr/{{task}}/seed{{seed}}_data.log",
    conda:
        "../envs/convergence.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        n_eval_per_type=OOCR["n_eval_per_type"],
    script:
        "../scripts/oocr_data.py"


rule oocr_finetune:
    input:
        data=f"{RESULTS}/oocr/{{task}}/seed{{seed}}/data.json",
        weights=model_weights,
    output:
        directory(f"{RESULTS}/oocr/{{task}}/{{model}}/seed{{seed}}/adapter"),
    log:
        f"{RESULTS}/logs/oocr/{{task}}/{{model}}/seed{{seed}}_finetune.log",
    conda:
        "../envs/convergence.yaml"
    threads: OOCR["threads"]
    resources:
        mem_mb=model_mem_mb,
        runtime=120,
        gpu=model_gpus,
    params:
        spec=oocr_spec,
        finetune=OOCR["finetune"],
        resources_dir=RESOURCES,
    script:
        "../scripts/oocr_finetune.py"


rule oocr_evaluate:
    # finetuned: the adapter, an empty context; untuned: the same questions to the base model.
    input:
        unpack(oocr_evaluate_inputs),
    output:
        f"{RESULTS}/oocr/{{task}}/{{model}}/seed{{seed}}/{{condition}}.parquet",
    log:
        f"{RESULTS}/logs/oocr/{{task}}/{{model}}/seed{{seed}}_{{condition}}.log",
    wildcard_constraints:
        condition="finetuned|untuned",
    conda:
        "../envs/convergence.yaml"
    threads: OOCR["threads"]
    resources:
        mem_mb=model_mem_mb,
        runtime=60,
        gpu=model_gpus,
    params:
        spec=oocr_spec,
        batch_size=OOCR["eval_batch_size"],
        resources_dir=RESOURCES,
    script:
        "../scripts/oocr_evaluate.py"


rule oocr_icl:
    # In-context learning: the untuned model with k training documents before each question.
    input:
        data=f"{RESULTS}/oocr/{{task}}/seed{{seed}}/data.json",
        weights=model_weights,
    output:
        f"{RESULTS}/oocr/{{task}}/{{model}}/seed{{seed}}/icl.parquet",
    log:
        f"{RESULTS}/logs/oocr/{{task}}/{{model}}/seed{{seed}}_icl.log",
    conda:
        "../envs/convergence.yaml"
    threads: OOCR["threads"]
    resources:
        mem_mb=model_mem_mb,
        runtime=60,
        gpu=model_gpus,
    params:
        spec=oocr_spec,
        icl=OOCR["icl"],
        batch_size=OOCR["eval_batch_size"],
        resources_dir=RESOURCES,
    script:
        "../scripts/oocr_icl.py"


rule oocr_summary:
    input:
        oocr_item_files(),
    output:
        table=f"{RESULTS}/oocr/summary.csv",
        figures=[
            report(
                f"{RESULTS}/oocr/{task}.png",
                caption="../report/oocr.rst",
                category="OOCR",
            )
            for task in OOCR["tasks"]
        ],
    log:
        f"{RESULTS}/logs/oocr/summary.log",
    conda:
        "../envs/convergence.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/oocr_summary.py"
