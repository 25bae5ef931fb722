"""Load and check the workflow configuration (the same checks the Snakefile runs before any job).

Schema validation (types, allowed values, defaults) comes from config/schema.yaml; `check_config`
adds what a schema cannot say: that offline models exist, that referenced datasets exist, that each
sampler has the keys it needs.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "config" / "schema.yaml"


class ConfigError(ValueError):
    """A configuration problem, with the offending key and the fix in the message."""


def _with_defaults(validator_class):
    """A validator that also fills in schema defaults (as snakemake.utils.validate does)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def validate_schema(config: dict, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """Validate `config` against the JSON schema and fill in defaults (in place, also returned)."""
    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for e in errors:
            key = ".".join(str(p) for p in e.absolute_path) or "<top level>"
            lines.append(f"  config key '{key}': {e.message}")
        raise ConfigError("invalid configuration (see config/schema.yaml):\n" + "\n".join(lines))
    return config


SAMPLER_REQUIRED_KEYS = {"scenes": [], "hf": ["path"], "text_file": ["file"]}


def check_config(config: dict) -> dict:
    """Checks beyond the schema. Raises ConfigError naming the key and the fix."""
    from convergence.models.offline import OFFLINE_MODELS

    _check_output_folders(config)
    datasets = config["datasets"]
    for name, spec in datasets.items():
        for key in SAMPLER_REQUIRED_KEYS[spec["sampler"]]:
            if not spec.get(key):
                raise ConfigError(
                    f"config key 'datasets.{name}.{key}' is required for sampler '{spec['sampler']}'"
                )
    for name, entry in config.get("zoo", {}).items():
        ds = datasets.get(entry["dataset"])
        if ds is None or ds["sampler"] != "scenes":
            raise ConfigError(
                f"config key 'zoo.{name}.dataset': '{entry['dataset']}' must be a scenes dataset of this config "
                "(zoo models learn the scene attributes)"
            )
    for name, spec in config["models"].items():
        if "__" in name:
            raise ConfigError(f"config key 'models.{name}': model names must not contain '__' "
                              "(it separates the two models of a pair in file names)")
        scheme, _, ref = spec["source"].partition(":")
        if scheme == "zoo":
            if ref not in config.get("zoo", {}):
                raise ConfigError(
                    f"config key 'models.{name}.source': no zoo entry '{ref}'. "
                    f"Zoo entries: {', '.join(sorted(config.get('zoo', {}))) or 'none'}"
                )
            if spec["modality"] != "vision":
                raise ConfigError(f"config key 'models.{name}.modality': zoo models are vision models (set vision)")
        if scheme == "offline" and ref not in OFFLINE_MODELS:
            raise ConfigError(
                f"config key 'models.{name}.source': unknown offline model '{ref}'. "
                f"Offline models: {', '.join(sorted(OFFLINE_MODELS))}; "
                "other models use hf:<hub id> or local:<folder>."
            )
        if scheme == "offline" and isinstance(spec.get("layers"), list):
            n = OFFLINE_MODELS[ref].n_hidden_states
            bad = [i for i in spec["layers"] if not -n <= i < n]
            if bad:
                raise ConfigError(
                    f"config key 'models.{name}.layers': {bad} out of range for {ref}, "
                    f"which has {n} hidden states (indices 0..{n - 1}, or negative from the end)"
                )
        for ds in spec.get("datasets") or []:
            if ds not in datasets:
                raise ConfigError(
                    f"config key 'models.{name}.datasets': unknown dataset '{ds}'. "
                    f"Datasets in this config: {', '.join(sorted(datasets))}"
                )
    for ds in config.get("extract", {}).get("datasets") or []:
        if ds not in datasets:
            raise ConfigError(
                f"config key 'extract.datasets': unknown dataset '{ds}'. "
                f"Datasets in this config: {', '.join(sorted(datasets))}"
            )
    _check_alignment(config)
    return config


def _check_output_folders(config: dict) -> None:
    """Outputs stay inside the working directory: Snakemake's bookkeeping (incomplete markers, reruns,
    --delete-all-output) and every path in the results refer to it, and a typo like `results: /` or
    `results: ../..` must not let jobs write or delete outside it."""
    for key, default in (("results", "results"), ("resources_dir", "resources")):
        value = str(config.get(key, default))
        parts = Path(value).parts
        if not value.strip() or Path(value).is_absolute() or ".." in parts or parts in ((), (".",)):
            raise ConfigError(
                f"config key '{key}': '{value}' is outside the workflow's working directory (or is the directory "
                f"itself); use a relative folder such as '{default}'. To keep outputs on another disk, link it: "
                f"ln -s /scratch/$USER/{default} {default}"
            )


def _check_alignment(config: dict) -> None:
    from convergence import metrics
    from convergence.pairwise import metric_call

    al = config.get("alignment", {})
    for ds in al.get("datasets") or []:
        if ds not in config["datasets"]:
            raise ConfigError(f"config key 'alignment.datasets': unknown dataset '{ds}'")
    for label, entry in al.get("metrics", {}).items():
        try:
            name, params = metric_call(entry, label)
        except ValueError as e:
            raise ConfigError(f"config key 'alignment.metrics.{label}': {e}") from None
        topk = params.get("topk", metrics.defaults(name).get("topk"))
        if topk is None:
            continue
        for ds in alignment_datasets(config):
            n = config["datasets"][ds].get("n")
            # The bootstrap CI scores half-samples of n // 2 rows, each needing topk other samples.
            if n is not None and int(topk) >= n // 2:
                raise ConfigError(
                    f"config key 'alignment.metrics.{label}.topk': {topk} neighbours need more samples than "
                    f"dataset '{ds}' has (n = {n}; the bootstrap uses half-samples of {n // 2}, so topk must be "
                    f"< {n // 2}). Lower topk or raise datasets.{ds}.n."
                )
    ref = al.get("reference")
    if ref and ref not in config["models"]:
        raise ConfigError(f"config key 'alignment.reference': '{ref}' is not a model of this config")
    ro = config.get("rosetta", {})
    for key in ("datasets", "models"):
        known = config["datasets"] if key == "datasets" else config["models"]
        for name in ro.get(key) or []:
            if name not in known:
                raise ConfigError(f"config key 'rosetta.{key}': unknown name '{name}'")
    for name in config.get("oocr", {}).get("models", []):
        spec = config["models"].get(name)
        if spec is None:
            raise ConfigError(f"config key 'oocr.models': unknown model '{name}'")
        if spec["modality"] != "language" or spec.get("kind", "auto") in ("encoder", "vision"):
            raise ConfigError(f"config key 'oocr.models': '{name}' must be a causal language model")
    _check_oocr(config.get("oocr", {}))
    for modality, anchor in ro.get("anchor", {}).items():
        if anchor not in config["models"] or config["models"][anchor]["modality"] != modality:
            raise ConfigError(f"config key 'rosetta.anchor.{modality}': '{anchor}' is not a {modality} model")


def _check_oocr(oocr: dict) -> None:
    """Per-task data sizes must be keyword arguments of the task's generator."""
    if not oocr.get("per_task"):
        return
    from convergence.oocr.tasks import task_params

    for task, overrides in oocr["per_task"].items():
        known = task_params(task)
        for key in (overrides.get("data") or {}):
            if key not in known or key == "n_eval_per_type":
                raise ConfigError(
                    f"config key 'oocr.per_task.{task}.data.{key}': not a size of the {task} task; use one of "
                    f"{', '.join(k for k in known if k != 'n_eval_per_type')} (n_eval_per_type is set for all "
                    "tasks by oocr.n_eval_per_type)"
                )


def models_on(config: dict, dataset: str) -> list[str]:
    return [m for m in config["models"] if dataset in datasets_for_model(config, m)]


def alignment_datasets(config: dict) -> list[str]:
    """Datasets to align on: the configured ones, else every dataset with at least two models."""
    chosen = config.get("alignment", {}).get("datasets") or list(config["datasets"])
    return [d for d in chosen if len(models_on(config, d)) >= 2]


def model_pairs(config: dict, dataset: str) -> list[tuple[str, str]]:
    """Unordered pairs in sorted order (the metrics are symmetric): K models -> K(K-1)/2 pairs."""
    models = sorted(models_on(config, dataset))
    return [(a, b) for i, a in enumerate(models) for b in models[i + 1:]]


# Model-spec keys that change what extraction computes. Params of a rule are part of its outputs' identity
# (Snakemake reruns on a change), so scheduling knobs (batch_size, device, mem_mb, datasets) and other
# stages' keys (units_layers) stay out: changing them must not recompute stores.
IDENTITY_KEYS = ("source", "revision", "gguf_file", "modality", "kind", "init", "seed", "dtype",
                 "trust_remote_code", "max_length")
EXTRACT_KEYS = IDENTITY_KEYS + ("pooling", "layers", "store_dtype")
UNITS_KEYS = IDENTITY_KEYS + ("units_layers",)


RUN_KEYS = ("batch_size", "device")


def spec_for(spec: dict, keys: tuple[str, ...]) -> dict:
    """The part of a model spec that a stage's outputs depend on."""
    return {k: spec[k] for k in keys if k in spec}


def controls_of(config: dict) -> dict[str, str | None]:
    """Each pretrained model -> its random-init control (a model with the same source and init: random)."""
    models = config["models"]
    out = {}
    for name, spec in models.items():
        if spec.get("init", "pretrained") != "pretrained":
            continue
        out[name] = next((m for m, s in sorted(models.items())
                          if s.get("init") == "random" and s["source"] == spec["source"]), None)
    return out


def rosetta_models(config: dict, dataset: str, modality: str) -> list[str]:
    chosen = config.get("rosetta", {}).get("models")
    return sorted(m for m in models_on(config, dataset)
                  if config["models"][m]["modality"] == modality and (chosen is None or m in chosen))


def rosetta_groups(config: dict) -> list[tuple[str, str]]:
    """(dataset, modality) groups with at least two models: units are only comparable within a modality."""
    ro = config.get("rosetta", {})
    if not ro.get("enabled", True):
        return []
    datasets = ro.get("datasets") or list(config["datasets"])
    return [(d, m) for d in datasets for m in ("language", "vision") if len(rosetta_models(config, d, m)) >= 2]


def rosetta_pairs(config: dict, dataset: str, modality: str) -> list[tuple[str, str]]:
    models = rosetta_models(config, dataset, modality)
    return [(a, b) for i, a in enumerate(models) for b in models[i + 1:]]


def rosetta_set_models(config: dict, dataset: str, modality: str) -> list[str]:
    """Trained models of a group: Rosetta sets are taken across these (three or more)."""
    return [m for m in rosetta_models(config, dataset, modality)
            if config["models"][m].get("init", "pretrained") == "pretrained"]


def load_config(path: str | Path) -> dict:
    with open(path) as f:
        config = yaml.safe_load(f) or {}
    return check_config(validate_schema(config))


def dataset_modalities(dataset_spec: dict) -> set[str]:
    """Which model modalities a dataset can feed: text for language models, images for vision."""
    if dataset_spec["sampler"] == "scenes":
        return {"language", "vision"}
    if dataset_spec["sampler"] == "hf":
        mods = set()
        if dataset_spec.get("text_column"):
            mods.add("language")
        if dataset_spec.get("image_column"):
            mods.add("vision")
        return mods
    return {"language"}


def datasets_for_model(config: dict, model: str) -> list[str]:
    """Datasets a model is extracted on: its own list, else extract.datasets, else all that fit."""
    spec = config["models"][model]
    chosen = spec.get("datasets") or config.get("extract", {}).get("datasets") or list(config["datasets"])
    return [d for d in chosen if spec["modality"] in dataset_modalities(config["datasets"][d])]
