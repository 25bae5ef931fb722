import torch

from convergence.rosetta.stage import correlate_units
from convergence.rosetta.units import units_path
from convergence.utils import log_to

kind = snakemake.wildcards.units
torch.set_num_threads(snakemake.threads)
with log_to(snakemake.log[0]):
    correlate_units(units_path(snakemake.input.a, kind), units_path(snakemake.input.b, kind), snakemake.output[0],
                    k=snakemake.params.k, seed=snakemake.params.seed, rotation_null=snakemake.params.rotation_null,
                    null_draws=snakemake.params.null_draws, null_k=snakemake.params.null_k,
                    shuffle_draws=snakemake.params.shuffle_draws)
