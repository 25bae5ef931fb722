from convergence.rosetta.report import compare_unit_kinds
from convergence.utils import log_to

kinds = snakemake.params.kinds
with log_to(snakemake.log[0]):
    compare_unit_kinds(snakemake.wildcards.modality, dict(zip(kinds, snakemake.input.excess)),
                       dict(zip(kinds, snakemake.input.get("sets") or [])), snakemake.output.table,
                       snakemake.output.figure)
