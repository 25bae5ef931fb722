import torch

from convergence.rosetta.stage import correlate_units
from convergence.utils import log_to

torch.set_num_threads(snakemake.threads)
with log_to(snakemake.log[0]):
    correlate_units(snakemake.input.a, snakemake.input.b, snakemake.output[0], k=snakemake.params.k,
                    seed=snakemake.params.seed, rotation_null=snakemake.params.rotation_null,
                    null_draws=snakemake.params.null_draws, null_k=snakemake.params.null_k)
