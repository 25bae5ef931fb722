from convergence.generator.stage import match_summary
from convergence.utils import log_to

p = snakemake.params
with log_to(snakemake.log[0]):
    match_summary(
        dict(zip(p.models, snakemake.input.pairs)),
        snakemake.wildcards.generator,
        p.trained,
        p.controls,
        snakemake.output,
        k_back=p.k_back,
        generator_dir=snakemake.input.generator,
        specs=p.specs,
        resources_dir=p.resources_dir,
        zoo_dir=p.zoo_dir,
        threads=snakemake.threads,
    )
