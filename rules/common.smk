# Config helpers, wildcard constraints and target lists. Targets come from the config (lookup),
# never from globbing results/, so adding a model adds exactly that model's jobs.
import re

from convergence.config import check_config, datasets_for_model

check_config(config)

RESULTS = config["results"]
RESOURCES = config["resources_dir"]
ZOO = f"{RESULTS}/zoo"


def _alternatives(names):
    return "|".join(re.escape(n) for n in sorted(names)) or "^$"


wildcard_constraints:
    dataset=_alternatives(config["datasets"]),
    model=_alternatives(config["models"]),
    offline="[A-Za-z0-9_.-]+",
    zoo=_alternatives(config.get("zoo", {})),


def model_spec(wildcards):
    return config["models"][wildcards.model]


def dataset_spec(wildcards):
    return config["datasets"][wildcards.dataset]


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
    return [
        f"{RESULTS}/activations/{dataset}/{model}.zarr"
        for model in config["models"]
        for dataset in datasets_for_model(config, model)
    ]
