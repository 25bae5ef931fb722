from pathlib import Path

from convergence.datasets.sources import fetch_source
from convergence.utils import log_to

# <resources>/datasets/<source>: a .deb placed beside it, in <resources>/datasets/, is used first.
out = Path(snakemake.output[0])
with log_to(snakemake.log[0]):
    fetch_source(snakemake.wildcards.source, out, resources_dir=out.parent.parent)
