from convergence.oocr.stage import run_evaluate
from convergence.utils import log_to

with log_to(snakemake.log[0]):
    run_evaluate(snakemake.input.data, snakemake.params.spec, snakemake.output[0],
                 condition=snakemake.wildcards.condition, adapter_dir=snakemake.input.get("adapter"),
                 resources_dir=snakemake.params.resources_dir, threads=snakemake.threads,
                 batch_size=snakemake.params.batch_size, model_name=snakemake.wildcards.model)
