from convergence.pairwise import align_stores, metric_call, write_pair
from convergence.utils import log_to

with log_to(snakemake.log[0]):
    name, params = metric_call(snakemake.params.metric, snakemake.wildcards.metric)
    result = align_stores(snakemake.input.a, snakemake.input.b, name, params, workers=snakemake.threads,
                          **snakemake.params.options)
    write_pair(result, snakemake.output[0])
    print(result.summary())
