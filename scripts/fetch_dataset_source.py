from convergence.datasets.sources import fetch_source
from convergence.utils import log_to

with log_to(snakemake.log[0]):
    fetch_source(snakemake.wildcards.source, snakemake.output[0], snakemake.params.resources_dir)
