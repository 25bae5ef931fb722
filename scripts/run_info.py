import json

import yaml

from convergence.utils import atomic_path, log_to, package_versions

with log_to(snakemake.log[0]):
    with atomic_path(snakemake.output.config) as tmp:
        tmp.write_text(yaml.safe_dump(dict(snakemake.params.config), sort_keys=False))
    names = ("convergence", "snakemake", "torch", "transformers", "peft", "numpy", "scipy", "zarr", "xarray", "gguf")
    with atomic_path(snakemake.output.versions) as tmp:
        tmp.write_text(json.dumps(package_versions(names), indent=2) + "\n")
