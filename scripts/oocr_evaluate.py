from convergence.oocr.stage import run_evaluate
from convergence.utils import log_to

icl, free_form = snakemake.params.icl, snakemake.params.free_form
outputs = {condition: snakemake.output[condition] for condition in ("untuned", "icl", "finetuned")}
with log_to(snakemake.log[0]):
    run_evaluate(snakemake.input.data, snakemake.params.spec, outputs, adapter_dir=snakemake.input.adapter,
                 icl_k=icl["k"], icl_max_tokens=icl["max_tokens"], resources_dir=snakemake.params.resources_dir,
                 threads=snakemake.threads, batch_size=snakemake.params.batch_size, samples=free_form["samples"],
                 temperature=free_form["temperature"], precision=snakemake.params.precision,
                 model_name=snakemake.wildcards.model)
