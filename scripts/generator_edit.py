from convergence.generator.stage import invert_and_edit
from convergence.utils import log_to

p = snakemake.params
with log_to(snakemake.log[0]):
    invert_and_edit(
        snakemake.input.generator,
        dict(zip(p.models, snakemake.input.pairs)),
        p.specs,
        snakemake.input.evaluator[0] if snakemake.input.evaluator else None,
        snakemake.input.samples,
        snakemake.output,
        invert=p.invert,
        edit=p.edit,
        seed=p.seed,
        resources_dir=p.resources_dir,
        zoo_dir=p.zoo_dir,
        threads=snakemake.threads,
    )
