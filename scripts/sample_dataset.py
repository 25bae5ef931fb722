from pathlib import Path

from convergence.datasets import sample_dataset
from convergence.utils import log_to

with log_to(snakemake.log[0]):
    sample_dataset(snakemake.wildcards.dataset, snakemake.params.spec, Path(snakemake.output.samples).parent,
                   resources_dir=snakemake.params.resources_dir)
