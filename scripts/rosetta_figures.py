from convergence.rosetta.report import make_figures
from convergence.rosetta.units import units_path
from convergence.utils import log_to

pairs = [tuple(p) for p in snakemake.params.pairs]
units = {m: units_path(folder, snakemake.wildcards.units) for m, folder in zip(snakemake.params.models,
                                                                               snakemake.input.units)}
with log_to(snakemake.log[0]):
    make_figures(
        snakemake.wildcards.modality,
        dict(zip(pairs, snakemake.input.summaries)),
        dict(zip(pairs, snakemake.input.matches)),
        units,
        snakemake.input.samples,
        snakemake.params.controls,
        dict(snakemake.output.items()),
        sets_path=snakemake.input.get("sets"),
        kind=snakemake.wildcards.units,
    )
