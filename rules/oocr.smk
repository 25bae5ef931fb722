# Inductive OOCR: per (task, seed) data; per (task, model, seed) a LoRA fine-tune and one evaluation job
# that answers the same items under three conditions (untuned, in-context learning, fine-tuned with an
# empty context); one summary table (CIs across seeds, then items) and a figure per task.


from convergence.oocr.stage import task_setting


rule oocr_data:
    output:
        f"{RESULTS}/oocr/{{task}}/seed{{seed}}/data.json",
    log:
        f"{RESULTS}/logs/oocr/{{task}}/seed{{seed}}_data.log",
    benchmark:
        f"{RESULTS}/benchmarks/oocr_data/{{task}}/seed{{seed}}_data.tsv"
    conda:
        "../envs/convergence.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        size=lambda wc: {"n_eval_per_type": OOCR["n_eval_per_type"]}
        | task_setting(OOCR, wc.task, "data"),
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
    benchmark:
        f"{RESULTS}/benchmarks/oocr_finetune/{{task}}/{{model}}/seed{{seed}}_finetune.tsv"
    conda:
        "../envs/convergence.yaml"
    threads: OOCR["threads"]
    resources:
        mem_mb=model_mem_mb,
        runtime=120,
        gpu=model_gpus,
    params:
        spec=oocr_spec,
        finetune=lambda wc: task_setting(OOCR, wc.task, "finetune"),
        precision=OOCR["precision"],
        resources_dir=RESOURCES,
    script:
        "../scripts/oocr_finetune.py"


rule oocr_evaluate:
    # One job, one model load: untuned, then in-context learning (k documents of each item's own
    # latents before it), then the adapter with an empty context. All three answer the same items.
    input:
        data=f"{RESULTS}/oocr/{{task}}/seed{{seed}}/data.json",
        weights=model_weights,
        adapter=f"{RESULTS}/oocr/{{task}}/{{model}}/seed{{seed}}/adapter",
    output:
        **{
            condition: f"{RESULTS}/oocr/{{task}}/{{model}}/seed{{seed}}/{condition}.parquet"
            for condition in ("untuned", "icl", "finetuned")
        },
    log:
        f"{RESULTS}/logs/oocr/{{task}}/{{model}}/seed{{seed}}_evaluate.log",
    benchmark:
        f"{RESULTS}/benchmarks/oocr_evaluate/{{task}}/{{model}}/seed{{seed}}_evaluate.tsv"
    conda:
        "../envs/convergence.yaml"
    threads: OOCR["threads"]
    resources:
        mem_mb=model_mem_mb,
        runtime=60,
        gpu=model_gpus,
    params:
        spec=oocr_spec,
        icl=lambda wc: task_setting(OOCR, wc.task, "icl"),
        free_form=OOCR["free_form"],
        precision=OOCR["precision"],
        batch_size=OOCR["eval_batch_size"],
        resources_dir=RESOURCES,
    script:
        "../scripts/oocr_evaluate.py"


rule oocr_summary:
    input:
        results=oocr_item_files(),
        adapters=oocr_adapters(),
    output:
        table=f"{RESULTS}/oocr/summary.csv",
        comparisons=f"{RESULTS}/oocr/comparisons.csv",
        curves=report(
            f"{RESULTS}/oocr/learning_curves.png",
            caption="../report/oocr_learning.rst",
            category="OOCR",
        ),
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
    benchmark:
        f"{RESULTS}/benchmarks/oocr_summary/summary.tsv"
    conda:
        "../envs/convergence.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/oocr_summary.py"
