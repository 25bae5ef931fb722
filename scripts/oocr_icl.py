from convergence.oocr.stage import run_evaluate
from convergence.utils import log_to

icl = snakemake.params.icl
with log_to(snakemake.log[0]):
    run_evaluate(snakemake.input.data, snakemake.params.spec, snakemake.output[0], condition="icl",
                 icl_k=icl["k"], items_per_type=icl["items_per_type"], icl_seed=int(snakemake.wildcards.seed),
                 resources_dir=snakemake.params.resources_dir, threads=snakemake.threads,
                 batch_size=snakemake.params.batch_size, model_name=snakemake.wildcards.model)
