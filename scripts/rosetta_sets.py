from convergence.rosetta.report import build_sets
from convergence.rosetta.units import units_path
from convergence.utils import log_to

models = snakemake.params.models
units = {m: units_path(folder, snakemake.wildcards.units) for m, folder in zip(models, snakemake.input.units)}
with log_to(snakemake.log[0]):
    build_sets(dict(zip(map(tuple, snakemake.params.pairs), snakemake.input.pairs)), models, units,
               snakemake.output.table, snakemake.output.summary, anchor=snakemake.params.anchor,
               k_back=snakemake.params.k_back)
