from convergence.alignment.aggregate import aggregate
from convergence.utils import log_to

with log_to(snakemake.log[0]):
    aggregate(
        snakemake.input.pairs,
        dict(zip(snakemake.params.models, snakemake.input.stores)),
        dict(snakemake.output.items()),
        metric_label=snakemake.wildcards.metric,
        dataset=snakemake.wildcards.dataset,
        reference=snakemake.params.reference,
        controls=snakemake.params.controls,
        alpha=snakemake.params.alpha,
    )
