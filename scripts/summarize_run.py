from convergence.summary import write_summary
from convergence.utils import log_to

with log_to(snakemake.log[0]):
    inputs = {key: list(snakemake.input.get(key, [])) for key in (
        "alignment_tables", "alignment_claims", "rosetta_excess", "generator_edits", "generator_matches")}
    oocr = list(snakemake.input.get("oocr_summary", []))
    write_summary({**inputs, "oocr_summary": oocr[0] if oocr else None}, snakemake.output.md, snakemake.output.html)
