from convergence.oocr.stage import make_data
from convergence.utils import log_to

with log_to(snakemake.log[0]):
    make_data(snakemake.wildcards.task, int(snakemake.wildcards.seed), snakemake.output[0], **snakemake.params.size)
