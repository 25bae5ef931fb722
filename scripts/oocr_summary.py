from pathlib import Path

from convergence.oocr.stage import summarize_runs
from convergence.utils import log_to

with log_to(snakemake.log[0]):
    summarize_runs(snakemake.input, snakemake.output.table, Path(snakemake.output.table).parent)
