from pathlib import Path

from convergence.config import dataset_needs
from convergence.datasets import sample_dataset
from convergence.utils import log_to

# The models planned on the dataset come from the config, not from params: adding a model must not
# resample (and so recompute) a dataset; they only let the sampler fail early on a missing column.
with log_to(snakemake.log[0]):
    sample_dataset(snakemake.wildcards.dataset, snakemake.params.spec, Path(snakemake.output.samples).parent,
                   resources_dir=snakemake.params.resources_dir,
                   needs=dataset_needs(snakemake.config, snakemake.wildcards.dataset))
