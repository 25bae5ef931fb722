from convergence.models.offline import materialize
from convergence.utils import log_to

with log_to(snakemake.log[0]):
    materialize(snakemake.wildcards.offline, snakemake.output[0])
