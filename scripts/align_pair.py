from convergence.alignment.pairwise import align_configured
from convergence.utils import log_to

with log_to(snakemake.log[0]):
    align_configured(snakemake.input.a, snakemake.input.b, snakemake.wildcards.metric, snakemake.params.metric,
                     snakemake.params.options, snakemake.params.sweep, snakemake.output[0],
                     workers=snakemake.threads)
