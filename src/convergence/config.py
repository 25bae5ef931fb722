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


SAMPLER_REQUIRED_KEYS = {"scenes": [], "hf": ["path"], "text_file": ["file"], "image_captions": []}
IMAGE_SAMPLERS = ("scenes", "image_captions", "hf")  # samplers that write images of `image_size` px
_IMAGE_CONTRACT = ("image_size", "resize", "background", "on_corrupt", "max_image_pixels")
# The keys each sampler reads (besides sampler, n, seed): any other key is refused, not ignored.
SAMPLER_KEYS = {
    "scenes": ("image_size",),
    "image_captions": _IMAGE_CONTRACT + ("source", "folder", "caption_lang", "svg"),
    "hf": _IMAGE_CONTRACT + ("path", "name", "revision", "split", "text_column", "caption_index", "image_column",
                             "shuffle"),
    "text_file": ("file", "shuffle", "on_corrupt"),
}


def check_config(config: dict) -> dict:
    """Checks beyond the schema. Raises ConfigError naming the key and the fix."""
    from convergence.models.offline import OFFLINE_MODELS

    _check_output_folders(config)
    datasets = config["datasets"]
    for name, spec in datasets.items():
        _check_sampler_keys(name, spec)
        for key in SAMPLER_REQUIRED_KEYS[spec["sampler"]]:
            if not spec.get(key):
                raise ConfigError(
                    f"config key 'datasets.{name}.{key}' is required for sampler '{spec['sampler']}'"
                )
        if spec["sampler"] == "image_captions" and bool(spec.get("source")) == bool(spec.get("folder")):
            raise ConfigError(
                f"config key 'datasets.{name}': sampler image_captions needs exactly one of `source:` "
                "(a collection the workflow fetches, e.g. tuxpaint-stamps) and `folder:` (a local folder)"
            )
    for name, entry in config.get("zoo", {}).items():
        ds = datasets.get(entry["dataset"])
        if ds is None or ds["sampler"] != "scenes":
            raise ConfigError(
                f"config key 'zoo.{name}.dataset': '{entry['dataset']}' must be a scenes dataset of this config "
                "(zoo models learn the scene attributes)"
            )
    _check_generators(config)
    for name, spec in config["models"].items():
        if "__" in name:
            raise ConfigError(f"config key 'models.{name}': model names must not contain '__' "
                              "(it separates the two models of a pair in file names)")
        scheme, _, ref = spec["source"].partition(":")
        if scheme == "zoo" and ref in zoo_generators(config):
            raise ConfigError(f"config key 'models.{name}.source': zoo entry '{ref}' is a generator; generators are "
                              "matched to the vision models in the generator stage (`generator:`), not extracted")
        if scheme == "zoo":
            if ref not in config.get("zoo", {}):
                raise ConfigError(
                    f"config key 'models.{name}.source': no zoo entry '{ref}'. "
                    f"Zoo entries: {', '.join(sorted(config.get('zoo', {}))) or 'none'}"
                )
            if spec["modality"] != "vision":
                raise ConfigError(f"config key 'models.{name}.modality': zoo models are vision models (set vision)")
        _check_model_entry(config, name, spec, scheme, ref)
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
            if spec["modality"] not in dataset_modalities(datasets[ds]):  # named, so never silently dropped
                column = "image_column" if spec["modality"] == "vision" else "text_column"
                raise ConfigError(
                    f"config key 'models.{name}.datasets': '{ds}' has no "
                    f"{'images' if spec['modality'] == 'vision' else 'texts'} for this {spec['modality']} model "
                    f"(datasets.{ds}: sampler {datasets[ds]['sampler']}"
                    f"{f', {column}: null' if datasets[ds]['sampler'] == 'hf' else ''}); "
                    "name a column or leave the dataset out"
                )
        _check_baseline_scales(config, name, spec)
    for ds in config.get("extract", {}).get("datasets") or []:
        if ds not in datasets:
            raise ConfigError(
                f"config key 'extract.datasets': unknown dataset '{ds}'. "
                f"Datasets in this config: {', '.join(sorted(datasets))}"
            )
    _check_alignment(config)
    return config


def _check_baseline_scales(config: dict, name: str, spec: dict) -> None:
    """A pixel baseline's largest scale must fit every image it reads; all images of a dataset are squares
    of its image_size, so this is known before any job runs."""
    if not spec["source"].startswith("baseline:pixels"):
        return
    from convergence.models import baselines

    largest = max(int(s) for s in baselines.resolve_params(spec["source"], spec.get("baseline"))["scales"])
    for ds in datasets_for_model(config, name):
        size = int(config["datasets"][ds].get("image_size", 0))
        if largest > size:
            raise ConfigError(
                f"config key 'models.{name}.baseline.scales': scale {largest} px exceeds the {size} px images of "
                f"dataset '{ds}' (datasets.{ds}.image_size); choose scales up to {size} or raise image_size"
            )


def dataset_needs(config: dict, dataset: str) -> dict[str, list[str]]:
    """Modality -> the models planned on `dataset`: what its sampler must find columns for."""
    needs: dict[str, list[str]] = {}
    for model, spec in config["models"].items():
        if dataset in datasets_for_model(config, model):
            needs.setdefault(spec["modality"], []).append(model)
    return needs


def _check_sampler_keys(name: str, spec: dict) -> None:
    """Refuse keys the sampler would ignore; fill in the image size an image sampler uses."""
    from convergence.datasets.images import DEFAULT_IMAGE_SIZE

    sampler = spec["sampler"]
    ignored = sorted(set(spec) - {"sampler", "n", "seed"} - set(SAMPLER_KEYS[sampler]))
    if ignored:
        why = " (scenes are drawn at image_size on their own backgrounds)" if sampler == "scenes" else ""
        raise ConfigError(
            f"config key 'datasets.{name}.{ignored[0]}': sampler '{sampler}' does not read "
            f"{', '.join(ignored)}{why}; remove it. Keys it reads: n, seed, {', '.join(SAMPLER_KEYS[sampler])}"
        )
    if sampler in DEFAULT_IMAGE_SIZE:
        spec.setdefault("image_size", DEFAULT_IMAGE_SIZE[sampler])


def _check_model_entry(config: dict, name: str, spec: dict, scheme: str, ref: str) -> None:
    """Baselines, modality and input size of offline models; fills in the modality's default `layers`."""
    from convergence.models import default_layers
    from convergence.models.offline import OFFLINE_MODELS

    if scheme == "baseline":
        from convergence.models import baselines

        try:
            baselines.resolve_params(spec["source"], spec.get("baseline"))
        except baselines.BaselineError as e:
            raise ConfigError(f"config key 'models.{name}.source': {e}") from None
        want = baselines.KINDS[baselines.kind_of(spec["source"])]
        if spec["modality"] != want:
            raise ConfigError(f"config key 'models.{name}.modality': {spec['source']} is a {want} baseline (set {want})")
        if spec.get("init", "pretrained") != "pretrained":
            raise ConfigError(f"config key 'models.{name}.init': a baseline has no weights to re-initialise; remove it")
        if spec.get("layers") == "blocks":
            raise ConfigError(f"config key 'models.{name}.layers': a baseline has no embedding layer; use all or a list")
    elif spec.get("baseline") is not None:
        raise ConfigError(f"config key 'models.{name}.baseline': only baseline:... sources take baseline options")
    spec.setdefault("layers", default_layers(spec))
    entry = OFFLINE_MODELS.get(ref) if scheme == "offline" else None
    if entry is None:
        return
    if spec["modality"] != entry.modality:
        raise ConfigError(f"config key 'models.{name}.modality': offline model '{ref}' is a {entry.modality} "
                          f"model (set modality: {entry.modality})")
    if entry.input_size:
        for ds in datasets_for_model(config, name):
            dspec = config["datasets"][ds]
            if "vision" in dataset_modalities(dspec) and int(dspec["image_size"]) < entry.input_size:
                raise ConfigError(
                    f"config key 'datasets.{ds}.image_size': {dspec['image_size']} px images cannot serve "
                    f"model '{name}' ({ref} runs at {entry.input_size} px); raise image_size to {entry.input_size} "
                    f"or leave {ds} out of models.{name}.datasets"
                )


def zoo_generators(config: dict) -> list[str]:
    """Zoo entries of `kind: generator` (GANs for the generator stage)."""
    return [n for n, e in config.get("zoo", {}).items() if e.get("kind") == "generator"]


def zoo_classifiers(config: dict) -> list[str]:
    """Zoo entries that are vision models (everything but generators)."""
    return [n for n, e in config.get("zoo", {}).items() if e.get("kind", "classifier") != "generator"]


def generator_names(config: dict) -> list[str]:
    """Generators the generator stage studies: `generator.generators`, else every generator zoo entry."""
    block = config.get("generator", {})
    if not block.get("enabled", True):
        return []
    chosen = block.get("generators")
    return list(chosen) if chosen is not None else zoo_generators(config)


def generator_models(config: dict) -> list[str]:
    """Vision models the generators are matched to: `generator.models`, else every vision model."""
    chosen = config.get("generator", {}).get("models")
    names = list(chosen) if chosen is not None else list(config["models"])
    return [m for m in names if config["models"][m]["modality"] == "vision"]


def generator_trained_models(config: dict) -> list[str]:
    """The matched models that are trained (form the sets, guide inversion): init pretrained."""
    return [m for m in generator_models(config) if config["models"][m].get("init", "pretrained") == "pretrained"]


def _check_generators(config: dict) -> None:
    zoo = config.get("zoo", {})
    for name in zoo_generators(config):
        entry = zoo[name]
        if entry.get("arch", {}).get("latent_dim") is None:
            raise ConfigError(f"config key 'zoo.{name}.arch.latent_dim' is required for a kind: generator entry: "
                              "the size of its latent z, e.g. latent_dim: 64")
        evaluator = entry.get("evaluator")
        if evaluator is not None and evaluator not in zoo_classifiers(config):
            raise ConfigError(f"config key 'zoo.{name}.evaluator': '{evaluator}' is not a classifier zoo entry "
                              f"(classifiers: {', '.join(zoo_classifiers(config)) or 'none'})")
    block = config.get("generator", {})
    for name in block.get("generators") or []:
        if name not in zoo_generators(config):
            raise ConfigError(f"config key 'generator.generators': '{name}' is not a zoo entry of kind: generator "
                              f"(generators: {', '.join(zoo_generators(config)) or 'none'})")
    for name in block.get("models") or []:
        spec = config["models"].get(name)
        if spec is None or spec["modality"] != "vision":
            raise ConfigError(f"config key 'generator.models': '{name}' is not a vision model of this config")
    ds = block.get("invert", {}).get("dataset", "scenes")
    if generator_names(config) and config["datasets"].get(ds, {}).get("sampler") != "scenes":
        raise ConfigError(f"config key 'generator.invert.dataset': '{ds}' must be a scenes dataset of this config "
                          "(edits are measured on its objects)")


RESULTS_MARKER = ".convergence-results"
# What a run writes at the top of `results/` (a folder of an earlier version, without the marker, is
# recognised by these and its logs/).
RESULTS_ENTRIES = {"activations", "alignment", "benchmarks", "datasets", "generator", "logs", "oocr", "rosetta",
                   "run_info", "summary.html", "summary.md", "units", "zoo", RESULTS_MARKER}


def claim_results_folder(results: str | Path) -> Path:
    """Make `results` the workflow's: absent or empty, it is created with a marker file; with the marker (or
    only what an earlier run writes, logs/ among it) it is reused. Any other folder is refused before a job
    runs: jobs would overwrite the user's files in it (summary.md, logs/, ...) without a word."""
    folder = Path(results)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"config key 'results': {folder} is a file, not a folder; choose another name")
    entries = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    if entries and RESULTS_MARKER not in entries and not ("logs" in entries and entries <= RESULTS_ENTRIES):
        shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
        raise ConfigError(
            f"config key 'results': {folder} is a folder the workflow did not make ({shown}), whose files a run "
            f"would overwrite. Choose a new or empty folder (results: <name>), or, if it does hold this "
            f"workflow's results, mark it: touch {folder / RESULTS_MARKER}")
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / RESULTS_MARKER
    if not marker.exists():
        marker.write_text("This folder holds the results of the convergence workflow; its runs may overwrite "
                          "anything in it.\n")
    return folder


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
    from convergence.alignment.pairwise import metric_call

    al = config.get("alignment", {})
    for ds in al.get("datasets") or []:
        if ds not in config["datasets"]:
            raise ConfigError(f"config key 'alignment.datasets': unknown dataset '{ds}'")
    for label, entry in al.get("metrics", {}).items():
        try:
            name, params = metric_call(entry, label)
        except ValueError as e:
            raise ConfigError(f"config key 'alignment.metrics.{label}': {e}") from None
        n_perm = (entry or {}).get("n_perm")
        if n_perm is not None and (isinstance(n_perm, bool) or not isinstance(n_perm, int) or n_perm < 1):
            raise ConfigError(f"config key 'alignment.metrics.{label}.n_perm': {n_perm!r} must be a positive integer "
                              "(the permutations of this metric's calibrated null)")
        if name == "cknna" and params.get("topk") is None:
            raise ConfigError(f"config key 'alignment.metrics.{label}.topk' is required for cknna: without it CKNNA "
                              "keeps every pair and measures unbiased CKA instead (PRH always passes a topk, e.g. 10)")
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
    for pair in (al.get("n_sweep") or {}).get("pairs") or []:
        models = str(pair).split("__")
        if len(models) != 2 or any(m not in config["models"] for m in models):
            raise ConfigError(f"config key 'alignment.n_sweep.pairs': '{pair}' is not two models of this config "
                              "joined by '__' (e.g. smollm2-135m__cnn-w32-s0)")
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
    for name, spec in config["models"].items():
        kind = spec.get("units")
        if kind in KIND_MODALITY and KIND_MODALITY[kind] != spec["modality"]:
            raise ConfigError(f"config key 'models.{name}.units': {kind} is for {KIND_MODALITY[kind]} models; "
                              f"{spec['modality']} models take "
                              f"{'mlp' if spec['modality'] == 'language' else 'activation'} or residual")
        layers = spec.get("units_layers", "all")
        if isinstance(layers, dict):
            unknown = sorted(set(layers) - set(UNIT_KINDS))
            if unknown:
                raise ConfigError(f"config key 'models.{name}.units_layers': unknown unit kinds {unknown} "
                                  f"(known: {', '.join(UNIT_KINDS)})")
            layers = layers.get("mlp", "all")
        if "mlp" in model_unit_kinds(config, name) and isinstance(layers, list) and 0 in layers:
            raise ConfigError(f"config key 'models.{name}.units_layers': layer 0 is the embedding output, which "
                              "no MLP computes; choose blocks' hidden states (1 and up) or set units: residual")
    _check_oocr(config.get("oocr", {}))
    for modality, anchor in ro.get("anchor", {}).items():
        if anchor not in config["models"] or config["models"][anchor]["modality"] != modality:
            raise ConfigError(f"config key 'rosetta.anchor.{modality}': '{anchor}' is not a {modality} model")


def _check_oocr(oocr: dict) -> None:
    """Per-task data sizes must be keyword arguments of the task's generator (n_eval_per_type among
    them: a task whose items cost more to score may ask fewer)."""
    if not oocr.get("per_task"):
        return
    from convergence.oocr.tasks import task_params

    for task, overrides in oocr["per_task"].items():
        known = task_params(task)
        for key in (overrides.get("data") or {}):
            if key not in known:
                raise ConfigError(
                    f"config key 'oocr.per_task.{task}.data.{key}': not a size of the {task} task; use one of "
                    f"{', '.join(known)}"
                )


# The `alignment` keys an align_pair job depends on (params are part of its outputs' identity).
PAIR_OPTIONS = ("normalize", "clip_quantile", "clip_method", "n_boot", "n_perm", "ci", "seed", "alpha", "aggregate")


def sweep_options(config: dict, a: str, b: str) -> dict | None:
    """The N-sweep settings of one pair, None when the sweep is off or the pair not chosen."""
    sweep = config.get("alignment", {}).get("n_sweep") or {}
    if not sweep.get("enabled", True):
        return None
    chosen = sweep.get("pairs")
    if chosen and not {f"{a}__{b}", f"{b}__{a}"} & set(chosen):
        return None
    return {"min_n": sweep.get("min_n", 64), "draws": sweep.get("draws", 5)}


def dataset_controls(config: dict, dataset: str) -> dict[str, str]:
    """Each pretrained model on `dataset` -> its random-init control (None: the config has none)."""
    on = set(models_on(config, dataset))
    return {m: c for m, c in controls_of(config).items() if m in on}


def models_on(config: dict, dataset: str) -> list[str]:
    return [m for m in config["models"] if dataset in datasets_for_model(config, m)]


def alignment_datasets(config: dict) -> list[str]:
    """Datasets to align on: the configured ones ([]: none), else every dataset with at least two models."""
    chosen = config.get("alignment", {}).get("datasets")
    chosen = list(config["datasets"]) if chosen is None else chosen
    return [d for d in chosen if len(models_on(config, d)) >= 2]


def is_baseline_source(source: str) -> bool:
    """An input baseline (`baseline:pixels`, `baseline:bag-of-words`, ...), not a network."""
    return str(source).startswith("baseline:")


def is_baseline_model(config: dict, model: str) -> bool:
    return is_baseline_source(config["models"][model]["source"])


def is_trained_model(config: dict, model: str) -> bool:
    """A network with its weights: not a random-init control, not an input baseline."""
    spec = config["models"][model]
    return spec.get("init", "pretrained") == "pretrained" and not is_baseline_model(config, model)


def model_pairs(config: dict, dataset: str) -> list[tuple[str, str]]:
    """Unordered pairs in sorted order (the metrics are symmetric): K models -> K(K-1)/2 pairs, less, with
    `alignment.baseline_pairs: trained` (the default), an input baseline paired with anything but a trained
    model: the claims compare a trained pair with trained x baseline pairs only, so a baseline against a
    random-init control or another baseline is work no table reads (`all` keeps them)."""
    models = sorted(models_on(config, dataset))
    pairs = [(a, b) for i, a in enumerate(models) for b in models[i + 1:]]
    if config.get("alignment", {}).get("baseline_pairs", "trained") == "all":
        return pairs
    return [(a, b) for a, b in pairs
            if not (is_baseline_model(config, a) and not is_trained_model(config, b))
            and not (is_baseline_model(config, b) and not is_trained_model(config, a))]


# Model-spec keys that change what extraction computes. Params of a rule are part of its outputs' identity
# (Snakemake reruns on a change), so scheduling knobs (batch_size, device, mem_mb, datasets) and other
# stages' keys (units_layers) stay out: changing them must not recompute stores.
IDENTITY_KEYS = ("source", "revision", "gguf_file", "modality", "kind", "init", "seed", "dtype",
                 "trust_remote_code", "max_length")
EXTRACT_KEYS = IDENTITY_KEYS + ("pooling", "layers", "store_dtype", "baseline")
UNITS_KEYS = IDENTITY_KEYS + ("units", "units_layers")


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


UNIT_KINDS = ("mlp", "activation", "residual")
# The kinds that exist for one modality only (residual is for both): a modality's privileged units.
KIND_MODALITY = {"mlp": "language", "activation": "vision"}


def rosetta_unit_kinds(config: dict, modality: str) -> list[str]:
    """The unit kinds a modality is matched on: those of `rosetta.unit_kinds` that exist for it (mlp: language,
    activation: vision, residual: both; default [mlp, activation], each modality's privileged units)."""
    listed = config.get("rosetta", {}).get("unit_kinds") or ["mlp", "activation"]
    return [k for k in listed if KIND_MODALITY.get(k, modality) == modality]


def model_unit_kinds(config: dict, model: str) -> list[str]:
    """The unit kinds a model's units folder holds: its `units` when set (that kind only, e.g. residual for a
    model whose MLP the hooks cannot find), else its modality's `rosetta_unit_kinds`."""
    spec = config["models"][model]
    return [spec["units"]] if spec.get("units") else rosetta_unit_kinds(config, spec["modality"])


def rosetta_models(config: dict, dataset: str, modality: str, kind: str | None = None) -> list[str]:
    """Models whose units Rosetta matches (of unit `kind`, if given); input baselines have no units."""
    chosen = config.get("rosetta", {}).get("models")
    return sorted(m for m in models_on(config, dataset)
                  if config["models"][m]["modality"] == modality and (chosen is None or m in chosen)
                  and not config["models"][m]["source"].startswith("baseline:")
                  and (kind is None or kind in model_unit_kinds(config, m)))


def rosetta_groups(config: dict) -> list[tuple[str, str, str]]:
    """(dataset, modality, unit kind) groups with at least two trained models (units are only comparable
    within a modality and kind, and a group without a pair of trained models has no matches to test
    against its nulls)."""
    ro = config.get("rosetta", {})
    if not ro.get("enabled", True):
        return []
    datasets = ro.get("datasets") or list(config["datasets"])
    return [(d, m, k) for d in datasets for m in ("language", "vision") for k in rosetta_unit_kinds(config, m)
            if len(rosetta_set_models(config, d, m, k)) >= 2]


def rosetta_pairs(config: dict, dataset: str, modality: str, kind: str | None = None) -> list[tuple[str, str]]:
    """The pairs a Rosetta group correlates, in stored (sorted) orientation: every pair of trained models,
    and for each, the one control pair its null-excess row reads: (a, control of b), else (control of a,
    b). Two controls are never paired: no table reads such a pair."""
    models = rosetta_models(config, dataset, modality, kind)
    trained = [m for m in models if config["models"][m].get("init", "pretrained") == "pretrained"]
    controls = {m: c for m, c in controls_of(config).items() if c in models}
    pairs = []
    for i, a in enumerate(trained):
        for b in trained[i + 1:]:
            pairs.append((a, b))
            if controls.get(b):
                pairs.append((a, controls[b]))
            elif controls.get(a):
                pairs.append((controls[a], b))
    return sorted({tuple(sorted(p)) for p in pairs})


def rosetta_set_models(config: dict, dataset: str, modality: str, kind: str | None = None) -> list[str]:
    """Trained models of a group: Rosetta sets are taken across these (three or more)."""
    return [m for m in rosetta_models(config, dataset, modality, kind)
            if config["models"][m].get("init", "pretrained") == "pretrained"]


def merge_overlay(config: dict, overlay: dict) -> dict:
    """`overlay` merged into `config` in place as Snakemake merges --configfile files: mappings key by key,
    anything else (lists included) replaced."""
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            merge_overlay(config[key], value)
        else:
            config[key] = value
    return config


def load_config(path: str | Path, *overlays: str | Path) -> dict:
    """A config file with overlays merged in (`snakemake --configfile path overlay ...`), validated and checked."""
    config = {}
    for file in (path, *overlays):
        with open(file) as f:
            merge_overlay(config, yaml.safe_load(f) or {})
    return check_config(validate_schema(config))


def dataset_modalities(dataset_spec: dict) -> set[str]:
    """Which model modalities a dataset can feed: text for language models, images for vision."""
    if dataset_spec["sampler"] == "hf":  # a column left out is inferred when sampled: it may exist
        mods = set()
        if "text_column" not in dataset_spec or dataset_spec["text_column"]:
            mods.add("language")
        if "image_column" not in dataset_spec or dataset_spec["image_column"]:
            mods.add("vision")
        return mods
    if dataset_spec["sampler"] in IMAGE_SAMPLERS:
        return {"language", "vision"}
    return {"language"}


def datasets_for_model(config: dict, model: str) -> list[str]:
    """Datasets a model is extracted on: its own list, else extract.datasets, else all that fit."""
    spec = config["models"][model]
    chosen = spec.get("datasets") or config.get("extract", {}).get("datasets") or list(config["datasets"])
    return [d for d in chosen if spec["modality"] in dataset_modalities(config["datasets"][d])]


# ---------------------------------------------------------------- run: selection

STAGES = ("extract", "alignment", "rosetta", "generator", "oocr")


def apply_run_selection(config: dict) -> dict:
    """Narrow a validated config to its `run:` selection, in place (and return it).

    `run.models`: only these models (errors for unknown names); settings that name models keep the selected
    ones. `run.datasets`: only these datasets, and every selected model runs on each of them its modality can
    read, whatever its own `datasets:` (a model that can read none is an error naming both keys); datasets
    that kept zoo entries train on stay. `run.stages`: a stage left out is switched off (`enabled: false`, or
    for alignment `datasets: []`); the zoo keeps only the entries kept models are loaded from and, with the
    generator stage, its generators and their evaluators. Without a `run:` key nothing changes.
    """
    run = config.get("run") or {}
    models, datasets = run.get("models"), run.get("datasets")
    stages = set(run.get("stages") or STAGES)
    for key, chosen, known in (("models", models, config["models"]), ("datasets", datasets, config["datasets"])):
        unknown = [n for n in chosen or [] if n not in known]
        if unknown:
            raise ConfigError(f"config key 'run.{key}': unknown {key[:-1]} {unknown}. "
                              f"{key.capitalize()} in this config: {', '.join(sorted(known))}")
    if models is not None:
        # Settings that name a model left out drop it; a name the config does not know stays, for
        # check_config to report.
        known, chosen = set(config["models"]), set(models)
        _keep_named(config, lambda m: m in chosen or m not in known)
        config["models"] = {m: config["models"][m] for m in models}
    if datasets is not None:
        for name, spec in config["models"].items():
            readable = [d for d in datasets if spec["modality"] in dataset_modalities(config["datasets"][d])]
            if not readable:
                raise ConfigError(
                    f"config key 'run.datasets': model '{name}' ({spec['modality']}) can read none of {datasets} "
                    f"({'no image column' if spec['modality'] == 'vision' else 'no text'}); select a dataset with "
                    f"{'images' if spec['modality'] == 'vision' else 'texts'} for it, or leave it out of run.models")
            spec["datasets"] = readable
        # The stages then run on every selected dataset their models are on.
        config.setdefault("extract", {})["datasets"] = None
        config.setdefault("rosetta", {})["datasets"] = None
        config.setdefault("alignment", {})["datasets"] = None
    zoo = config.get("zoo") or {}
    needed = {spec["source"].partition(":")[2] for spec in config["models"].values()
              if spec["source"].startswith("zoo:")}
    with_generator = ("generator" in stages and config.get("generator", {}).get("enabled", True)
                      and bool(generator_models(config)))
    if with_generator:
        generators = config["generator"].get("generators") or [n for n, e in zoo.items() if e.get("kind") == "generator"]
        needed |= {g for g in generators if g in zoo}
        needed |= {zoo[g]["evaluator"] for g in generators if g in zoo and zoo[g].get("evaluator")}
    if models is not None or stages != set(STAGES):
        config["zoo"] = {n: e for n, e in zoo.items() if n in needed}
    if datasets is not None:
        train_sets = {e["dataset"] for e in config.get("zoo", {}).values()}
        evaluated = set()
        if with_generator:
            evaluated = {config["generator"].get("invert", {}).get("dataset")} - {None}
        config["datasets"] = {d: s for d, s in config["datasets"].items()
                              if d in datasets or d in train_sets or d in evaluated}
    for stage in ("rosetta", "generator", "oocr"):
        if stage not in stages:
            config.setdefault(stage, {})["enabled"] = False
    if "alignment" not in stages:
        config.setdefault("alignment", {})["datasets"] = []
    if "extract" not in stages and "alignment" in stages:
        raise ConfigError("config key 'run.stages': alignment needs extract (it aligns the pooled activations); "
                          "add extract or leave alignment out")
    return config


def _keep_named(config: dict, keep) -> None:
    """Settings that name models keep the names `keep(name)` accepts (the others are dropped, not an error)."""
    oocr = config.get("oocr", {})
    if oocr.get("models"):
        oocr["models"] = [m for m in oocr["models"] if keep(m)]
    ro = config.get("rosetta", {})
    if ro.get("models") is not None:
        ro["models"] = [m for m in ro["models"] if keep(m)]
    ro["anchor"] = {k: v for k, v in (ro.get("anchor") or {}).items() if keep(v)}
    gen = config.get("generator", {})
    if gen.get("models") is not None:
        gen["models"] = [m for m in gen["models"] if keep(m)]
    al = config.get("alignment", {})
    if al.get("reference") is not None and not keep(al["reference"]):
        al["reference"] = None
    sweep = al.get("n_sweep") or {}
    if sweep.get("pairs") is not None:
        sweep["pairs"] = [p for p in sweep["pairs"] if all(keep(m) for m in p.split("__"))]
