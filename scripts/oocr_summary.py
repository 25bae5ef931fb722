from pathlib import Path

from convergence.oocr.stage import summarize_runs
from convergence.utils import log_to

with log_to(snakemake.log[0]):
    summarize_runs(snakemake.input.results, snakemake.output.table, Path(snakemake.output.table).parent,
                   comparisons_csv=snakemake.output.comparisons, adapter_dirs=snakemake.input.adapters)
