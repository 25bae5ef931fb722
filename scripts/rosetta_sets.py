from convergence.rosetta.report import build_sets
from convergence.utils import log_to

models = snakemake.params.models
with log_to(snakemake.log[0]):
    build_sets(dict(zip(map(tuple, snakemake.params.pairs), snakemake.input.pairs)), models,
               dict(zip(models, snakemake.input.units)), snakemake.output.table, snakemake.output.summary,
               anchor=snakemake.params.anchor, k_back=snakemake.params.k_back)
