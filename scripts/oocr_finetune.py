from convergence.oocr.stage import run_finetune
from convergence.utils import log_to

with log_to(snakemake.log[0]):
    run_finetune(snakemake.input.data, snakemake.params.spec, snakemake.output[0],
                 resources_dir=snakemake.params.resources_dir, seed=int(snakemake.wildcards.seed),
                 threads=snakemake.threads, precision=snakemake.params.precision, progress=True,
                 **snakemake.params.finetune)
