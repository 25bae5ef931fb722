from convergence.rosetta.units import extract_units
from convergence.config import RUN_KEYS, spec_for
from convergence.utils import log_to

# How to run (batch size, device) comes from the config directly: not a param, so changing it reruns nothing.
spec = {**snakemake.params.spec, **spec_for(snakemake.config["models"][snakemake.wildcards.model], RUN_KEYS)}

with log_to(snakemake.log[0]):
    extract_units(
        snakemake.input.samples,
        spec,
        snakemake.output[0],
        model_name=snakemake.wildcards.model,
        dataset_name=snakemake.wildcards.dataset,
        resources_dir=snakemake.params.resources_dir,
        zoo_dir=snakemake.params.zoo_dir,
        grid=snakemake.params.grid,
        store_dtype=snakemake.params.store_dtype,
        threads=snakemake.threads,
        kinds=snakemake.params.kinds,
    )
