from convergence.aggregate import aggregate
from convergence.utils import log_to

with log_to(snakemake.log[0]):
    aggregate(
        snakemake.input.pairs,
        dict(zip(snakemake.params.models, snakemake.input.stores)),
        snakemake.output.table,
        snakemake.output.heatmap,
        snakemake.output.layers,
        snakemake.output.scale,
        metric_label=snakemake.wildcards.metric,
        dataset=snakemake.wildcards.dataset,
        reference=snakemake.params.reference,
    )
