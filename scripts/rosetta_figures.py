from convergence.rosetta.report import make_figures
from convergence.utils import log_to

pairs = [tuple(p) for p in snakemake.params.pairs]
with log_to(snakemake.log[0]):
    make_figures(
        snakemake.wildcards.modality,
        dict(zip(pairs, snakemake.input.summaries)),
        dict(zip(pairs, snakemake.input.matches)),
        dict(zip(snakemake.params.models, snakemake.input.units)),
        snakemake.input.samples,
        snakemake.params.controls,
        dict(snakemake.output.items()),
        sets_path=snakemake.input.get("sets"),
    )
