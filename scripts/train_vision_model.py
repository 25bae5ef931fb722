from convergence.utils import log_to
from convergence.vision.zoo import train_zoo_model

entry = snakemake.params.entry
with log_to(snakemake.log[0]):
    train_zoo_model(snakemake.input.samples, entry["arch"], snakemake.output[0], **entry["train"],
                    threads=snakemake.threads)
