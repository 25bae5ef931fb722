from convergence.extract import extract_to_zarr
from convergence.utils import log_to

with log_to(snakemake.log[0]):
    extract_to_zarr(
        snakemake.input.samples,
        snakemake.params.spec,
        snakemake.output[0],
        model_name=snakemake.wildcards.model,
        dataset_name=snakemake.wildcards.dataset,
        resources_dir=snakemake.params.resources_dir,
        zoo_dir=snakemake.params.zoo_dir,
        chunk_size=snakemake.params.chunk_size,
        threads=snakemake.threads,
    )
