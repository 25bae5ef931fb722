# Config helpers, wildcard constraints and target lists. Targets come from the config (lookup),
# never from globbing results/, so adding a model adds exactly that model's jobs.
import re
from types import SimpleNamespace

from convergence.config import (
    EXTRACT_KEYS,
    IDENTITY_KEYS,
    PAIR_OPTIONS,
    UNITS_KEYS,
    alignment_datasets,
    check_config,
    claim_results_folder,
    controls_of,
    dataset_controls,
    datasets_for_model,
    generator_models,
    generator_names,
    generator_trained_models,
    model_pairs,
    model_unit_kinds,
    models_on,
    rosetta_groups,
    rosetta_models,
    rosetta_pairs,
    rosetta_set_models,
    spec_for,
    sweep_options,
    zoo_classifiers,
    zoo_generators,
)

check_config(config)
claim_results_folder(config["results"])

RESULTS = config["results"]
ALIGN = config["alignment"]
ROSETTA = config["rosetta"]
OOCR = config["oocr"]
RESOURCES = config["resources_dir"]
ZOO = f"{RESULTS}/zoo"


def _alternatives(names):
    return "|".join(re.escape(n) for n in sorted(names)) or "^$"


wildcard_constraints:
    dataset=_alternatives(config["datasets"]),
    model=_alternatives(config["models"]),
    offline="[A-Za-z0-9_.-]+",
    source="[A-Za-z0-9_.-]+",
    zoo=_alternatives(zoo_classifiers(config)),  # generators train in rules/generator.smk
    generator=_alternatives(zoo_generators(config)),
    metric=_alternatives(ALIGN["metrics"]),
    a=_alternatives(config["models"]),
    b=_alternatives(config["models"]),
    modality="language|vision",
    units="mlp|activation|residual",
    task="|".join(OOCR["tasks"]) or "^$",
    seed=r"\d+",


def extract_spec(wildcards):
    """What a store depends on (scheduling knobs such as batch_size stay out: they never rerun a job)."""
    return spec_for(config["models"][wildcards.model], EXTRACT_KEYS)


def units_spec(wildcards):
    return spec_for(config["models"][wildcards.model], UNITS_KEYS)


def dataset_spec(wildcards):
    return config["datasets"][wildcards.dataset]


def dataset_inputs(wildcards):
    """A dataset sampled from a fetched collection depends on its fetch job (shared by its datasets)."""
    source = config["datasets"][wildcards.dataset].get("source")
    return {"source": f"{RESOURCES}/datasets/{source}"} if source else {}


def model_weights(wildcards):
    """The folder a model loads from when the workflow makes it: unpacked offline weights or a trained
    zoo model (a job of its own, shared by the model's random-init control)."""
    scheme, _, ref = config["models"][wildcards.model]["source"].partition(":")
    if scheme == "offline":
        return [f"{RESOURCES}/models/{ref}"]
    if scheme == "zoo":
        return [f"{ZOO}/{ref}"]
    return []


def model_mem_mb(wildcards, attempt):
    """A memory request that grows on retry: 4 GB for small models, more for the big-vocabulary ones."""
    spec = config["models"][wildcards.model]
    base = spec.get("mem_mb") or 6000
    return base * attempt


def model_gpus(wildcards):
    return 1 if config["models"][wildcards.model].get("device") == "cuda" else 0


def extract_targets():
    if "extract" not in config["run"]["stages"]:
        return []
    return [
        f"{RESULTS}/activations/{dataset}/{model}.zarr"
        for model in config["models"]
        for dataset in datasets_for_model(config, model)
    ]


def alignment_pair_files(wildcards):
    return [
        f"{RESULTS}/alignment/{wildcards.dataset}/{wildcards.metric}/{a}__{b}.parquet"
        for a, b in model_pairs(config, wildcards.dataset)
    ]


def dataset_stores(wildcards):
    return [
        f"{RESULTS}/activations/{wildcards.dataset}/{m}.zarr"
        for m in models_on(config, wildcards.dataset)
    ]


def alignment_targets():
    return [
        f"{RESULTS}/alignment/{dataset}/{metric}{suffix}"
        for dataset in alignment_datasets(config)
        for metric in ALIGN["metrics"]
        for suffix in (
            ".csv",
            ".png",
            "_layers.png",
            "_scale.png",
            "_claims.csv",
            "_claims.png",
            "_nsweep.csv",
            "_nsweep.png",
        )
    ]


def rosetta_pair_trained(a, b):
    """Rotation nulls are drawn for pairs of trained models only: a random-init control is a null itself."""
    return all(
        config["models"][m].get("init", "pretrained") == "pretrained" for m in (a, b)
    )


def units_kinds(wildcards):
    """The unit kinds a model's units folder holds (one extraction pass writes them all)."""
    return model_unit_kinds(config, wildcards.model)


def units_folder(dataset, model):
    return f"{RESULTS}/units/{dataset}/{model}"


def rosetta_dir(wildcards):
    return f"{RESULTS}/rosetta/{wildcards.dataset}/{wildcards.units}"


def rosetta_set_pairs(dataset, modality, units):
    """Every pair of the group's trained models (sets are cycle-checked), in stored (sorted) orientation."""
    models = sorted(rosetta_set_models(config, dataset, modality, units))
    return [(a, b) for i, a in enumerate(models) for b in models[i + 1 :]]


def rosetta_set_pair_files(wildcards):
    return [
        f"{rosetta_dir(wildcards)}/pairs/{a}__{b}.npz"
        for a, b in rosetta_set_pairs(
            wildcards.dataset, wildcards.modality, wildcards.units
        )
    ]


def rosetta_set_units(wildcards):
    return [
        units_folder(wildcards.dataset, m)
        for m in rosetta_set_models(
            config, wildcards.dataset, wildcards.modality, wildcards.units
        )
    ]


def group_controls(dataset, modality, units):
    """Controls of this group's models only: adding a model elsewhere must not rerun this group."""
    models = rosetta_models(config, dataset, modality, units)
    return {m: c for m, c in controls_of(config).items() if m in models and c in models}


def rosetta_figure_inputs(wildcards):
    d, mod, kind = wildcards.dataset, wildcards.modality, wildcards.units
    pairs = rosetta_pairs(config, d, mod, kind)
    base = rosetta_dir(wildcards)
    inputs = {
        "summaries": [f"{base}/matches/{a}__{b}.json" for a, b in pairs],
        "matches": [f"{base}/matches/{a}__{b}.parquet" for a, b in pairs],
        "units": [units_folder(d, m) for m in rosetta_models(config, d, mod, kind)],
        "samples": f"{RESULTS}/datasets/{d}/samples.parquet",
    }
    if len(rosetta_set_models(config, d, mod, kind)) >= 3:
        inputs["sets"] = f"{base}/{mod}_sets.csv"
    return inputs


def rosetta_kind_groups(dataset, modality):
    """The unit kinds of a (dataset, modality) that form Rosetta groups."""
    return [k for d, m, k in rosetta_groups(config) if (d, m) == (dataset, modality)]


def rosetta_kinds_inputs(wildcards):
    """Each kind's null-excess table and, where it has sets, their summary."""
    d, mod = wildcards.dataset, wildcards.modality
    kinds = rosetta_kind_groups(d, mod)
    inputs = {
        "excess": [f"{RESULTS}/rosetta/{d}/{k}/{mod}_null_excess.csv" for k in kinds]
    }
    if all(len(rosetta_set_models(config, d, mod, k)) >= 3 for k in kinds):
        inputs["sets"] = [f"{RESULTS}/rosetta/{d}/{k}/{mod}_sets.json" for k in kinds]
    return inputs


def rosetta_targets():
    groups = rosetta_groups(config)
    targets = [
        f"{RESULTS}/rosetta/{d}/{kind}/{mod}_{suffix}"
        for d, mod, kind in groups
        for suffix in (
            "null_excess.csv",
            "null_excess.png",
            "layers.png",
            "pairwise.png",
            "neurons.png",
            "neurons.md",
        )
    ]
    compared = sorted(
        {(d, mod) for d, mod, _ in groups if len(rosetta_kind_groups(d, mod)) > 1}
    )
    return targets + [
        f"{RESULTS}/rosetta/{d}/{mod}_unit_kinds.{ext}"
        for d, mod in compared
        for ext in ("csv", "png")
    ]


def oocr_spec(wildcards):
    return spec_for(config["models"][wildcards.model], IDENTITY_KEYS)


def oocr_item_files():
    return [
        f"{RESULTS}/oocr/{task}/{model}/seed{seed}/{condition}.parquet"
        for task in OOCR["tasks"]
        for model in OOCR["models"]
        for seed in OOCR["seeds"]
        for condition in ("finetuned", "untuned", "icl")
    ]


def oocr_adapters():
    return [
        f"{RESULTS}/oocr/{task}/{model}/seed{seed}/adapter"
        for task in OOCR["tasks"]
        for model in OOCR["models"]
        for seed in OOCR["seeds"]
    ]


def oocr_targets():
    if not (OOCR["enabled"] and OOCR["models"] and OOCR["tasks"]):
        return []
    return [
        f"{RESULTS}/oocr/summary.csv",
        f"{RESULTS}/oocr/comparisons.csv",
        f"{RESULTS}/oocr/learning_curves.png",
    ] + [f"{RESULTS}/oocr/{task}.png" for task in OOCR["tasks"]]


GENERATOR = config["generator"]
GEN_OUT = f"{RESULTS}/generator"


def generator_pair_files(wildcards, models=None):
    """The generator's pair file with each matched model (or with `models`), by model name."""
    names = generator_models(config) if models is None else models
    return {m: f"{GEN_OUT}/{wildcards.generator}/pairs/{m}.npz" for m in names}


def generator_model_weights(models):
    """What the vision models need on disk: `model_weights` of each (zoo folders, unpacked offline weights)."""
    return sorted({w for m in models for w in model_weights(SimpleNamespace(model=m))})


def generator_evaluator(wildcards):
    evaluator = config["zoo"][wildcards.generator].get("evaluator")
    return [f"{ZOO}/{evaluator}"] if evaluator else []


def generator_targets():
    """Per generator: matches and sets (with any vision model), inversion and edits (with a trained one)."""
    names = (
        ["matches.csv", "nulls.png", "sets.csv", "sets.png"]
        if generator_models(config)
        else []
    )
    if generator_trained_models(config):
        names += ["inversion.csv", "edits.csv", "edit_summary.csv", "edits.png"]
    return [f"{GEN_OUT}/{g}/{name}" for g in generator_names(config) for name in names]


def study_targets():
    """Every result of the study: activations, alignment, Rosetta neurons, OOCR, the generator stage."""
    return (
        extract_targets()
        + alignment_targets()
        + rosetta_targets()
        + oocr_targets()
        + generator_targets()
    )


def summary_inputs():
    """The stage tables results/summary.md reads, by the summary's argument names."""
    gens = generator_names(config)
    return {
        "alignment_tables": [
            t
            for t in alignment_targets()
            if t.endswith(".csv") and not t.endswith(("_claims.csv", "_nsweep.csv"))
        ],
        "alignment_claims": [
            t for t in alignment_targets() if t.endswith("_claims.csv")
        ],
        "rosetta_excess": [
            t for t in rosetta_targets() if t.endswith("_null_excess.csv")
        ],
        "generator_edits": [
            t for t in generator_targets() if t.endswith("edit_summary.csv")
        ],
        "generator_matches": [
            t for t in generator_targets() if t.endswith("matches.csv")
        ],
        "oocr_summary": [t for t in oocr_targets() if t.endswith("summary.csv")],
    }
