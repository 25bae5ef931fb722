from convergence.config import RUN_KEYS, spec_for
from convergence.generator.stage import match_pair
from convergence.utils import log_to

# How to run (batch size, device) comes from the config directly: not a param, so changing it reruns nothing.
spec = {**snakemake.params.spec, **spec_for(snakemake.config["models"][snakemake.wildcards.model], RUN_KEYS)}
p = snakemake.params
with log_to(snakemake.log[0]):
    match_pair(
        snakemake.input.generator,
        spec,
        snakemake.wildcards.model,
        snakemake.output[0],
        n_samples=p.n_samples,
        seed=p.seed,
        grid=p.grid,
        res=p.res,
        k=p.k,
        batch_size=p.batch_size,
        resources_dir=p.resources_dir,
        zoo_dir=p.zoo_dir,
        threads=snakemake.threads,
    )
