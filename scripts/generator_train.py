from convergence.generator.stage import train_generator_model
from convergence.utils import log_to

entry = snakemake.params.entry
with log_to(snakemake.log[0]):
    train_generator_model(
        snakemake.input.samples,
        entry,
        snakemake.output[0],
        evaluator_dir=snakemake.input.evaluator[0] if snakemake.input.evaluator else None,
        eval_samples=snakemake.input.eval_samples,
        threads=snakemake.threads,
    )
