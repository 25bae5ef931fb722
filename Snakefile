# convergence: do different neural networks converge on the same representations?
# Table of contents of the workflow; each stage lives in rules/<stage>.smk, its logic in src/convergence/.
from snakemake.utils import min_version

from convergence.config import apply_run_selection, validate_schema

min_version("9.0")


report: "report/workflow.rst"


configfile: "config/config.yaml"


# Types, allowed values and defaults first (one line per wrong key, not the schema's dump), then what a
# schema cannot say (unknown offline model, ...).
validate_schema(config, workflow.source_path("config/schema.yaml"))
# `run:` narrows the config to the models, datasets and stages it names, before anything is planned.
apply_run_selection(config)


include: "rules/common.smk"
include: "rules/datasets.smk"
include: "rules/models.smk"
include: "rules/extract.smk"
include: "rules/alignment.smk"
include: "rules/rosetta.smk"
include: "rules/generator.smk"
include: "rules/oocr.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        study_targets(),  # activations, alignment, Rosetta neurons, OOCR, the generator
        f"{RESULTS}/summary.md",  # what the run finds, in numbers
        f"{RESULTS}/run_info/config.yaml",  # the run's config and versions, for the report
