from convergence.rosetta.stage import match_units
from convergence.utils import log_to

with log_to(snakemake.log[0]):
    match_units(snakemake.input[0], snakemake.output.table, k_relaxed=snakemake.params.k_relaxed,
                summary_path=snakemake.output.summary)
