"""Un-pooled activations ("units" stores) for Rosetta Neurons: one row per position, not per sample.

`extract_units` writes `results/units/{dataset}/{model}.zarr` (DESIGN §2): Zarr v3, readable with
`xarray.open_zarr`, variable `activations` with dims `(position, layer, neuron)` (float16 by default,
`units_store_dtype: float32` in the model's config entry for full precision), chunked along `position`
with whole layers and neurons per chunk. Coordinates:

- `sample_id` (position): the sample the position belongs to (samples in the dataset's order);
- `unit_pos` (position): the position inside its sample: the word index for text, the cell index
  `row * grid + col` for images;
- `layer` (layer): hidden-state indices (0 = embedding output), as in the pooled stores; for MLP units
  (below) index i names the MLP of the block whose output is hidden state i (block i-1, 0-based), for
  activation units the site `activation_sites` gives index i;
- text only: `word` (the word's string), `char_start`, `char_end` (its span in the sample's text).

Attributes as the pooled stores (model, source, init, seed, modality, kind, n_params, params_sha256,
dataset, dataset_sha256, packages, ...) plus `units` ("mlp", "activation" or "residual"), `positions` ("word" or
"cell"), `word_pattern` or `grid`, `layers`, `n_positions`, `n_samples`.

What a unit is (`units` in the model's config entry, see `unit_kind`):

- `mlp` (the default for language models): the MLP's post-activation neurons of each chosen block, the
  units whose basis the nonlinearity privileges (Gurnee et al. 2024, *Universal Neurons in GPT2*; Dravid
  et al. 2026, *Neuron Populations Exhibit Divergent Selectivity with Scale*). Read by forward hooks on the
  one model (`mlp_sites`): for Llama, Gemma, Mistral, Qwen the input of `mlp.down_proj`, i.e.
  act(gate_proj x) * up_proj x; for BERT, MPNet, RoBERTa the output of `intermediate` (act(dense x));
  for GPT-2 the input of `mlp.c_proj`, for GPT-NeoX/Pythia the input of `mlp.dense_4h_to_h`.
- `activation` (the default for vision models): units right after an elementwise nonlinearity, chosen per
  architecture (`activation_sites`), as the Rosetta Neurons reference matches ReLU feature maps:
  EfficientNet-Lite the ReLU6 units of the stem, of the depthwise stage of each stage's last block (the
  input of the linear projection that gives hidden state i) and of the head (index stages + 1); ResNets
  their hidden states (each stage ends in a ReLU); ViTs the MLP neurons after GELU (as `mlp`).
- `residual`: the hidden states (residual-stream coordinates, which have no privileged basis: a
  rotation of them is as good a basis, see the rotation null in `convergence.rosetta.stage`): patch
  tokens or CNN feature maps for vision models (EfficientNet-Lite's stage outputs are linear bottlenecks).

`units_layers` (a list or "all") applies to every kind a store holds; a mapping names each kind's own
(`kind_layers`).

Positions are what makes units of different models comparable, so they never depend on the model:

- Language: the WORDS of each text, `WORD_PATTERN = r"\\w+(?:[-']\\w+)*|[^\\w\\s]"` — runs of word
  characters, joined through inner hyphens and apostrophes ("top-left", "it's" are one word), and every
  other non-space character on its own ("." "," "(" are words). Every non-special token of the model's
  fast tokenizer belongs to each word its character span (`offset_mapping`) overlaps; a word's
  activation is the mean of its tokens' hidden states (per layer). Special tokens (BOS, CLS, SEP,
  padding: `special_tokens_mask`, or an empty span) and tokens that overlap no word (pure whitespace)
  are left out. Every language model therefore has exactly the same positions, in the same order, on a
  dataset. A word that no token covers (its sample exceeds `max_length`, or the tokenizer drops its
  characters) is an error naming the sample: averaging over nothing would invent a position.
- Vision: the cells of one common `grid x grid` map. Token models (ViT, DINOv2, CLIP vision) keep their
  patch tokens (the last `h*w` tokens: CLS and register tokens are dropped), reshaped to the patch grid
  `[D, h, w]`; CNN stages are feature maps `[C, H, W]` already. Every map is resized to `grid x grid`
  with `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`, as the Rosetta Neurons
  reference resizes activation maps (no antialiasing when shrinking). All selected layers must have
  one width (choose `units_layers` of one width).

Memory is bounded by one window of samples and one Zarr chunk of positions: samples are run in windows
(sorted by length within a window so batches pad little), positions are buffered and written chunk by
chunk. The store is written to a temporary sibling and renamed into place (`atomic_path`).
"""

from __future__ import annotations

import inspect
import re
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from tqdm.auto import tqdm

from convergence.datasets import read_samples
from convergence.models import LoadedModel, load_model, resolve_layers
from convergence.extract import network_attrs, plan_batches
from convergence.store import open_checked
from convergence.utils import atomic_path

WORD_PATTERN = r"\w+(?:[-']\w+)*|[^\w\s]"
_WORD_RE = re.compile(WORD_PATTERN)
STORE_DTYPES = {"float32": np.float32, "float16": np.float16}
DEFAULT_STORE_DTYPE = "float16"
DEFAULT_GRID = 8
# Rows (positions) per Zarr chunk: about this many bytes of activations, within CHUNK_ROWS_RANGE.
CHUNK_BYTES = 16 * 2**20
CHUNK_ROWS_RANGE = (256, 16384)
POSITION_DIM = "position"
UNITS_DIMS = (POSITION_DIM, "layer", "neuron")
UNIT_KINDS = ("mlp", "activation", "residual")
# Each modality's units with a privileged basis (after an elementwise nonlinearity) and the modality a kind
# is for; residual is for both.
PRIVILEGED_KIND = {"language": "mlp", "vision": "activation"}
KIND_MODALITY = {"mlp": "language", "activation": "vision"}
# transformers vision models whose hidden states are themselves post-ReLU (ResNet: embedder conv-BN-ReLU +
# max-pool; every stage ends in ReLU(x + residual)): their "activation" units are their hidden states.
POST_RELU_HIDDEN_STATES = ("resnet",)
# Where a block's MLP neurons are, tried in this order: (module path inside the block, "input" of that
# module or its "output"). The post-activation units are the input of the down projection, or the output
# of BERT's `intermediate` (dense + activation).
MLP_SITES = (
    ("mlp.down_proj", "input"),  # Llama, Gemma, Mistral, Qwen: act(gate) * up
    ("intermediate", "output"),  # BERT, MPNet, RoBERTa: act(dense(x))
    ("mlp.c_proj", "input"),  # GPT-2
    ("mlp.dense_4h_to_h", "input"),  # GPT-NeoX, Pythia
    ("mlp.fc2", "input"),  # Phi, CLIP text
    ("fc2", "input"),  # OPT
)


class UnitsError(ValueError):
    pass


# ---------------------------------------------------------------- words (language positions)


def split_words(text: str) -> list[tuple[str, int, int]]:
    """The words of `text` as `(word, char_start, char_end)`, by `WORD_PATTERN` (see the module doc)."""
    return [(m.group(), m.start(), m.end()) for m in _WORD_RE.finditer(text)]


def word_token_weights(words: Sequence[tuple[str, int, int]], offsets, special, sample_id: str) -> np.ndarray:
    """`[n_words, n_tokens]` averaging weights: row w is 1/|tokens of w| on the tokens of word w.

    `offsets [T, 2]`: each token's character span; `special [T]`: 1 for special tokens (padding
    included). A token belongs to every word its span overlaps. Raises UnitsError naming `sample_id`
    when a word has no token.
    """
    offsets = np.asarray(offsets, np.int64).reshape(-1, 2)
    special = np.asarray(special, bool).reshape(-1)
    starts = np.array([w[1] for w in words], np.int64)
    ends = np.array([w[2] for w in words], np.int64)
    tok_start, tok_end = offsets[:, 0], offsets[:, 1]
    live = ~special & (tok_end > tok_start)
    overlap = (tok_start[None, :] < ends[:, None]) & (starts[:, None] < tok_end[None, :]) & live[None, :]
    counts = overlap.sum(1)
    if (counts == 0).any():
        w = int(np.flatnonzero(counts == 0)[0])
        raise UnitsError(
            f"sample '{sample_id}': word {w} ({words[w][0]!r} at characters {words[w][1]}..{words[w][2]}) "
            f"gets no token ({int((counts == 0).sum())} such words). The text is longer than max_length, or "
            "the tokenizer drops these characters; raise the model's max_length or shorten the texts."
        )
    return overlap / counts[:, None]


# ---------------------------------------------------------------- spatial cells (vision positions)


def spatial_units(hidden_states: Sequence[torch.Tensor], layers: Sequence[int], grid: int,
                  patch_grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Hidden states -> `[B, grid*grid, len(layers), D]` float32, cell index `row * grid + col`.

    Token layers `[B, T, D]` keep their last `h*w` tokens (`patch_grid = (h, w)`; without it a square
    grid of the largest `s*s <= T - 1` tokens is assumed), i.e. CLS and register tokens are dropped.
    CNN layers `[B, C, H, W]` are used as they are. Each map is resized to `grid x grid`, bilinear,
    `align_corners=False`. Layers of different widths raise a ValueError.
    """
    if len(layers) == 0:
        raise UnitsError("no layers selected")
    maps = [as_map(hidden_states[i], i, patch_grid).float() for i in layers]
    widths = {i: m.shape[1] for i, m in zip(layers, maps)}
    if len(set(widths.values())) > 1:
        listing = ", ".join(f"{i}: {w}" for i, w in widths.items())
        raise UnitsError(
            f"selected layers differ in width ({listing}); a (position, layer, neuron) store needs one width. "
            "Choose `units_layers` of one width in the model's config entry (CNN stages often widen)."
        )
    cells = []
    for fmap in maps:
        if tuple(fmap.shape[-2:]) != (grid, grid):
            fmap = F.interpolate(fmap, size=(grid, grid), mode="bilinear", align_corners=False)
        cells.append(fmap.flatten(2).transpose(1, 2))  # [B, grid*grid, D], row-major cells
    return torch.stack(cells, dim=2)


def as_map(h: torch.Tensor, layer: int, patch_grid: tuple[int, int] | None = None) -> torch.Tensor:
    """One layer's units as a map `[B, C, H, W]`: CNN maps as they are; tokens `[B, T, D]` keep their last
    `h*w` (the patch grid `patch_grid`, else the largest square below T), i.e. CLS and register tokens go."""
    if h.ndim == 4:
        return h
    if h.ndim != 3:
        raise UnitsError(f"layer {layer}: expected [B, T, D] tokens or [B, C, H, W] maps, got shape {tuple(h.shape)}")
    hh, ww = patch_grid if patch_grid is not None else _square_grid(h.shape[1] - 1, layer)
    if h.shape[1] < hh * ww:
        hh, ww = _square_grid(h.shape[1], layer, exact=True)  # e.g. a downsampled stage without CLS
    return h[:, h.shape[1] - hh * ww:].reshape(h.shape[0], hh, ww, h.shape[2]).permute(0, 3, 1, 2)


def image_units(lm: LoadedModel, images: Sequence, layers: Sequence[int] | Mapping[str, Sequence[int]], grid: int,
                kinds: Sequence[str] = ("residual",), sites: Mapping | None = None) -> dict[str, torch.Tensor]:
    """Units of in-memory images, per unit kind: `[B, grid*grid, len(layers), D]` float32 (see `spatial_units`).

    `lm`: a vision model from `convergence.models.load_model`; `images`: PIL images (or whatever its
    processor takes); `layers`: hidden-state (or activation-site) indices, or per kind; `kinds`: "residual"
    and/or "activation" (`activation_sites`; `sites` passes them in when already found). One forward pass
    without gradients. The cells are those of a units store written by `extract_units` for the same model,
    grid, kinds and layers.
    """
    layers = {kind: [int(i) for i in (layers[kind] if isinstance(layers, Mapping) else layers)] for kind in kinds}
    with torch.inference_mode():
        pixels = lm.processor(images=list(images), return_tensors="pt")["pixel_values"].to(lm.device)
        maps = vision_maps(lm.model, pixels.to(lm.model.dtype), layers, sites)
        patch_grid = patch_grid_of(lm.model, pixels)
        return {kind: spatial_units(maps[kind], layers[kind], int(grid), patch_grid) for kind in kinds}


def vision_maps(model: torch.nn.Module, pixels: torch.Tensor, layers: Mapping[str, Sequence[int]],
                sites: Mapping | None = None) -> dict[str, Mapping[int, torch.Tensor]]:
    """One forward pass of a vision model -> per unit kind, layer index -> its map (`[B, C, H, W]` or tokens
    `[B, T, D]`, as the model computes it): "residual" the hidden states, "activation" the post-nonlinearity
    units of `activation_sites` (found here unless `sites` gives them). Gradients flow when the caller
    allows them."""
    want = {kind: [int(i) for i in idx] for kind, idx in layers.items()}
    if "activation" in want and sites is None:
        sites = activation_sites(model, want["activation"], n_hidden_states(model))
    hooked = {i: site for i, site in (sites or {}).items() if site is not None and i in want.get("activation", ())}
    with UnitCapture(hooked) as capture:
        out = model(pixel_values=pixels, output_hidden_states=True)
    hidden = out.hidden_states
    maps: dict[str, Mapping[int, torch.Tensor]] = {}
    if "residual" in want:
        maps["residual"] = {i: hidden[i] for i in want["residual"]}
    if "activation" in want:
        maps["activation"] = {i: capture.values[i] if i in hooked else hidden[i] for i in want["activation"]}
    return maps


def n_hidden_states(model: torch.nn.Module) -> int:
    """How many hidden states a vision model returns (stem/embedding output included)."""
    if hasattr(model, "stage_ends"):  # convergence.vision.efficientnet
        return len(model.stage_ends) + 1
    config = getattr(model, "config", None)
    config = getattr(config, "vision_config", None) or config
    n = getattr(config, "num_hidden_layers", None)
    if n is None and getattr(config, "depths", None) is not None:
        n = len(config.depths)
    if n is None:
        raise UnitsError(f"{type(model).__name__}: cannot tell how many hidden states it returns")
    return int(n) + 1


def _square_grid(n_tokens: int, layer: int, exact: bool = False) -> tuple[int, int]:
    side = int(np.sqrt(max(n_tokens, 0)))
    while (side + 1) ** 2 <= n_tokens:
        side += 1
    if side == 0 or (exact and side * side != n_tokens):
        raise UnitsError(f"layer {layer}: cannot tell the patch grid of {n_tokens} tokens")
    return side, side


def patch_grid_of(model: torch.nn.Module, pixels: torch.Tensor) -> tuple[int, int] | None:
    config = getattr(model, "config", None)
    config = getattr(config, "vision_config", None) or config
    patch = getattr(config, "patch_size", None)
    if patch is None:
        return None
    ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
    return pixels.shape[-2] // ph, pixels.shape[-1] // pw


# ---------------------------------------------------------------- what a unit is


def unit_kind(spec: dict) -> str:
    """The model's units: its config's `units`, else its modality's privileged kind ("mlp" for language models,
    "activation" for vision models)."""
    modality = spec.get("modality", "language")
    kind = spec.get("units") or PRIVILEGED_KIND.get(modality, "residual")
    if kind not in UNIT_KINDS:
        raise UnitsError(f"units must be one of {list(UNIT_KINDS)}, got {kind!r}")
    if KIND_MODALITY.get(kind, modality) != modality:
        raise UnitsError(f"units: {kind} is for {KIND_MODALITY[kind]} models; {modality} models take "
                         f"{PRIVILEGED_KIND[modality]} or residual")
    return kind


def kind_layers(spec: dict, kind: str, default="all"):
    """A model's `units_layers` for one unit kind: a list or "all" applies to every kind; a mapping
    (`{activation: [8], residual: [5]}`) names each kind's own, `default` for a kind it leaves out."""
    layers = spec.get("units_layers", default)
    if isinstance(layers, Mapping):
        return layers.get(kind, default)
    return layers


def transformer_blocks(model: torch.nn.Module, n_blocks: int) -> tuple[str, torch.nn.ModuleList]:
    """The model's list of `n_blocks` transformer blocks (the first ModuleList of that length), with its name."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_blocks:
            return name, module
    raise UnitsError(f"{type(model).__name__}: found no list of {n_blocks} transformer blocks (a torch ModuleList) "
                     "whose MLPs could be hooked; use units: residual for this model")


def mlp_sites(model: torch.nn.Module, layers: Sequence[int], n_hidden_states: int) -> dict[int, tuple[torch.nn.Module, str]]:
    """Hidden-state index i -> (module, "input" | "output") holding the post-activation MLP units of block i-1.

    Raises UnitsError naming the model class and the modules searched when a block has none of `MLP_SITES`,
    or for layer 0 (the embedding output has no MLP).
    """
    if any(int(i) == 0 for i in layers):
        raise UnitsError("units: mlp has no layer 0 (the embedding output comes from no MLP); choose units_layers "
                         f"from 1 to {n_hidden_states - 1}")
    prefix, blocks = transformer_blocks(model, n_hidden_states - 1)
    sites = {}
    for i in layers:
        block = blocks[int(i) - 1]
        for path, where in MLP_SITES:
            try:
                sites[int(i)] = (block.get_submodule(path), where)
                break
            except AttributeError:
                continue
        else:
            searched = ", ".join(f"{prefix}.{int(i) - 1}.{p}" for p, _ in MLP_SITES)
            raise UnitsError(f"units: mlp: found no MLP in {type(model).__name__} block {int(i) - 1} "
                             f"({type(block).__name__}); searched {searched}. Use units: residual for this model, "
                             "or add its MLP module to convergence.rosetta.units.MLP_SITES")
    return sites


def activation_sites(model: torch.nn.Module, layers: Sequence[int],
                     n_hidden_states: int) -> dict[int, tuple[torch.nn.Module, str] | None]:
    """Layer index -> (module, "input" | "output") holding a vision model's post-nonlinearity units, or None
    where hidden state i itself is post-nonlinearity.

    - a model with an `activation_sites()` method (`convergence.vision.efficientnet`: 0 the stem, 1..stages
      the depthwise ReLU6 units of each stage's last block, stages + 1 the head): those modules' outputs;
    - transformers ResNets (`POST_RELU_HIDDEN_STATES`): the hidden states, which follow a ReLU;
    - transformers ViTs (ViT, DINOv2, CLIP vision, ...): the MLP neurons after GELU, as `mlp_sites` finds
      them for LMs (layer i: the MLP of the block giving hidden state i; no layer 0).
    Raises UnitsError naming the model and what to use instead where none of these applies.
    """
    own = getattr(model, "activation_sites", None)
    if callable(own):
        modules = list(own())
        bad = [int(i) for i in layers if not 0 <= int(i) < len(modules)]
        if bad:
            raise UnitsError(f"units: activation of {type(model).__name__}: layers {bad} out of range 0..{len(modules) - 1}")
        return {int(i): (modules[int(i)], "output") for i in layers}
    model_type = _model_type(model)
    if model_type in POST_RELU_HIDDEN_STATES:
        return {int(i): None for i in layers}
    try:
        return mlp_sites(model, layers, n_hidden_states)
    except UnitsError as err:
        raise UnitsError(f"units: activation: {type(model).__name__} ({model_type}) is neither a CNN whose units "
                         f"this package knows nor a transformer with findable MLPs ({err}). Use units: residual for "
                         "this model, or give it an activation_sites() method.") from None


def activation_layer_count(model: torch.nn.Module, n_hidden_states: int) -> int:
    """How many activation-unit layers a vision model has (EfficientNet-Lite: its hidden states + the head)."""
    own = getattr(model, "activation_sites", None)
    return len(own()) if callable(own) else n_hidden_states


class UnitCapture:
    """Forward hooks that keep chosen modules' inputs or outputs during one forward pass.

    `sites`: layer index -> (module, "input" | "output"), as `mlp_sites` and `activation_sites` give them.
    `with UnitCapture(sites) as capture: model(...)`; then `capture.values[i]` (detached), or
    `capture.stacked(layers)`: `[B, L, T, D]` float32. The hooks are removed on exit, also after an error.
    """

    def __init__(self, sites: Mapping[int, tuple[torch.nn.Module, str]]):
        self.sites = dict(sites)
        self.values: dict[int, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> "UnitCapture":
        for i, (module, where) in self.sites.items():
            if where == "input":
                hook = module.register_forward_pre_hook(lambda _m, args, i=i: self._keep(i, args[0]))
            else:
                hook = module.register_forward_hook(lambda _m, _args, out, i=i: self._keep(i, out))
            self._handles.append(hook)
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _keep(self, layer: int, value: torch.Tensor) -> None:
        self.values[layer] = value if torch.is_grad_enabled() else value.detach()

    def stacked(self, layers: Sequence[int]) -> torch.Tensor:
        missing = [i for i in layers if int(i) not in self.values]
        if missing:
            raise UnitsError(f"the forward pass never reached the MLPs of layers {missing}")
        return torch.stack([self.values.pop(int(i)) for i in layers], dim=1).float()


# ---------------------------------------------------------------- inputs


class TextUnits:
    """Texts -> word positions. Tokenises everything once up front to fail early (truncation, no fast tokenizer)."""

    positions = "word"

    def __init__(self, lm: LoadedModel, texts: list[str], sample_ids: list[str], max_length: int,
                 units: str | Sequence[str] = "residual"):
        tok = lm.processor
        if not getattr(tok, "is_fast", False):
            raise UnitsError(f"units of {lm.source} need a fast tokenizer (character offsets); "
                             f"{type(tok).__name__} is not one")
        self.lm, self.texts, self.ids, self.max_length = lm, texts, sample_ids, max_length
        self.kinds = [units] if isinstance(units, str) else list(units)
        self.words = [split_words(t) for t in texts]
        enc = tok(texts, truncation=False, padding=False, return_offsets_mapping=True,
                  return_special_tokens_mask=True)
        self.lengths = np.array([len(x) for x in enc["input_ids"]])
        for i, sid in enumerate(sample_ids):
            if not self.words[i]:
                raise UnitsError(f"sample '{sid}' has no words (empty text): it would have no positions")
            if self.lengths[i] > max_length:
                raise UnitsError(
                    f"sample '{sid}' has {self.lengths[i]} tokens, more than max_length={max_length}: its last "
                    "words would get no token. Raise the model's max_length or shorten the texts."
                )
            word_token_weights(self.words[i], enc["offset_mapping"][i], enc["special_tokens_mask"][i], sid)
        self.n_positions = np.array([len(w) for w in self.words])
        # Causal LMs: run the decoder without its LM head (same hidden states, no [B, T, vocab] logits).
        base = getattr(lm.model, "base_model", None) if lm.kind == "causal_lm" else None
        self.net = base if isinstance(base, torch.nn.Module) and base is not lm.model else lm.model
        self._accepted = inspect.signature(self.net.forward).parameters
        self._mlp_checked = False

    def forward(self, idx: np.ndarray, layers: Sequence[int] | Mapping[str, Sequence[int]]) -> dict[str, list[np.ndarray]]:
        """Per unit kind, per sample of `idx`: `[n_words, L, D]` float32 (D: the MLP width for "mlp").

        One forward pass gives every kind: the MLP hooks and the hidden states together. `layers`: hidden-state
        indices, or per kind.
        """
        layers = {kind: list(layers[kind] if isinstance(layers, Mapping) else layers) for kind in self.kinds}
        lm = self.lm
        enc = lm.processor([self.texts[i] for i in idx], padding=True, truncation=False, return_tensors="pt",
                           return_offsets_mapping=True, return_special_tokens_mask=True)
        offsets, special = enc.pop("offset_mapping").numpy(), enc.pop("special_tokens_mask").numpy()
        inputs = {k: v.to(lm.device) for k, v in enc.items() if k in self._accepted}
        residual = "residual" in self.kinds
        hidden = {}
        if "mlp" in self.kinds:
            with UnitCapture(mlp_sites(self.net, layers["mlp"], lm.n_hidden_states)) as capture:
                out = self.net(**inputs, output_hidden_states=residual)
            hidden["mlp"] = capture.stacked(layers["mlp"])  # [B, L, T, D_mlp]
        else:
            out = self.net(**inputs, output_hidden_states=True)
        if residual:
            hidden["residual"] = torch.stack([out.hidden_states[i] for i in layers["residual"]], dim=1).float()
        result = {kind: [] for kind in self.kinds}
        for row, i in enumerate(idx):
            weights = word_token_weights(self.words[i], offsets[row], special[row], self.ids[i])
            for kind in self.kinds:
                w = torch.from_numpy(weights).to(hidden[kind])  # [W, T]
                result[kind].append(torch.einsum("wt,ltd->wld", w, hidden[kind][row]).cpu().numpy())
        return result

    def coords(self, sample_index: int) -> dict[str, np.ndarray]:
        words = self.words[sample_index]
        return {"word": np.array([w[0] for w in words], dtype=object),
                "char_start": np.array([w[1] for w in words], np.int64),
                "char_end": np.array([w[2] for w in words], np.int64)}


class ImageUnits:
    """Images -> `grid x grid` cells, of every unit kind in `units` ("activation", "residual") from one pass."""

    positions = "cell"

    def __init__(self, lm: LoadedModel, image_paths: list[str], grid: int,
                 units: str | Sequence[str] = "residual", activation_layers: Sequence[int] = ()):
        if int(grid) < 1:
            raise UnitsError(f"grid must be >= 1, got {grid}")
        self.lm, self.paths, self.grid = lm, image_paths, int(grid)
        self.kinds = [units] if isinstance(units, str) else list(units)
        self.lengths = np.zeros(len(image_paths), np.int64)
        self.n_positions = np.full(len(image_paths), self.grid ** 2)
        # Found once, before any forward pass, so that a model without such units fails at once.
        self.sites = (activation_sites(lm.model, activation_layers, lm.n_hidden_states)
                      if "activation" in self.kinds else None)

    def forward(self, idx: np.ndarray, layers: Sequence[int] | Mapping[str, Sequence[int]]) -> dict[str, list[np.ndarray]]:
        from PIL import Image

        images = [Image.open(self.paths[i]).convert("RGB") for i in idx]
        units = image_units(self.lm, images, layers, self.grid, kinds=self.kinds, sites=self.sites)
        return {kind: list(units[kind].cpu().numpy()) for kind in self.kinds}

    def coords(self, sample_index: int) -> dict[str, np.ndarray]:
        return {}


# ---------------------------------------------------------------- writing


def chunk_rows_for(n_layers: int, width: int, itemsize: int) -> int:
    low, high = CHUNK_ROWS_RANGE
    return int(min(high, max(low, CHUNK_BYTES // max(1, n_layers * width * itemsize))))


class _ChunkedWriter:
    """Buffers positions and appends them to the store in whole chunks (the last one may be partial)."""

    def __init__(self, path: Path, layers: list[int], attrs: dict, store_dtype, chunk_rows: int | None):
        self.path, self.layers, self.attrs, self.dtype = path, layers, attrs, np.dtype(store_dtype)
        self.chunk_rows = chunk_rows
        self.buffer: list[dict[str, np.ndarray]] = []
        self.buffered = 0
        self.written = 0

    def add(self, rows: dict[str, np.ndarray]) -> None:
        acts = rows["activations"]
        if self.chunk_rows is None:
            self.chunk_rows = chunk_rows_for(acts.shape[1], acts.shape[2], self.dtype.itemsize)
        cast = acts.astype(self.dtype)
        if not np.isfinite(cast).all():
            what = "NaN/inf" if not np.isfinite(acts).all() else f"values beyond {self.dtype.name}'s range"
            raise UnitsError(f"model {self.attrs['model']} produced {what} at sample {rows['sample_id'][0]!r}"
                             + ("" if self.dtype == np.float32 else "; set units_store_dtype: float32"))
        self.buffer.append(dict(rows, activations=cast))
        self.buffered += len(cast)
        if self.buffered >= self.chunk_rows:
            self._flush(final=False)

    def close(self) -> None:
        self._flush(final=True)
        if self.written == 0:
            raise UnitsError("no positions to write")

    def _flush(self, final: bool) -> None:
        if not self.buffer:
            return
        joined = {k: np.concatenate([b[k] for b in self.buffer]) for k in self.buffer[0]}
        take = len(joined["activations"]) if final else (self.buffered // self.chunk_rows) * self.chunk_rows
        rest = {k: v[take:] for k, v in joined.items()}
        self.buffer = [rest] if len(rest["activations"]) else []
        self.buffered = len(rest["activations"])
        self._write({k: v[:take] for k, v in joined.items()})

    def _write(self, rows: dict[str, np.ndarray]) -> None:
        coords = {k: (POSITION_DIM, v) for k, v in rows.items() if k != "activations"}
        coords["layer"] = np.array(self.layers)
        ds = xr.Dataset({"activations": (UNITS_DIMS, rows["activations"])}, coords=coords)
        ds.attrs = self.attrs  # every write: an append rewrites the group's attributes
        with warnings.catch_warnings():  # zarr: consolidated metadata is not part of the v3 spec (xarray reads it)
            warnings.simplefilter("ignore")
            if self.written == 0:
                enc = {name: {"chunks": (self.chunk_rows,) + ds[name].shape[1:]}
                       for name in ds.variables if ds[name].dims[:1] == (POSITION_DIM,)}
                ds.to_zarr(self.path, mode="w-", zarr_format=3, consolidated=True, encoding=enc)
            else:
                ds.drop_vars("layer").to_zarr(self.path, append_dim=POSITION_DIM, consolidated=True)
        self.written += len(rows["activations"])


def write_units(inputs, sample_ids: list[str], outs: Mapping[str, Path], layers: Mapping[str, list[int]],
                batch_size: int, window: int, store_dtype, attrs: Mapping[str, dict], progress: bool = True,
                chunk_rows: int | None = None) -> None:
    """Run `inputs` (TextUnits/ImageUnits) window by window and stream its positions into one store per unit
    kind: `outs[kind]`, holding hidden-state indices `layers[kind]`, with attributes `attrs[kind]`."""
    writers = {kind: _ChunkedWriter(path, layers[kind], attrs[kind], store_dtype, chunk_rows)
               for kind, path in outs.items()}
    model = next(iter(attrs.values()))["model"]
    bar = tqdm(total=len(sample_ids), desc=f"units {model}", unit="sample", disable=not progress, mininterval=2)
    with torch.inference_mode():
        for start, stop, batches in plan_batches(inputs.lengths, window, batch_size):
            per_sample: dict[int, dict[str, np.ndarray]] = {}
            for idx in batches:
                kinds = inputs.forward(idx, layers)
                for j, i in enumerate(idx.tolist()):
                    per_sample[i] = {kind: kinds[kind][j] for kind in writers}
                bar.update(len(idx))
            for i in range(start, stop):  # positions in dataset order
                sample = per_sample.pop(i)
                coords = inputs.coords(i)
                for kind, writer in writers.items():
                    n = len(sample[kind])
                    writer.add({"activations": sample[kind],
                                "sample_id": np.array([sample_ids[i]] * n, dtype=object),
                                "unit_pos": np.arange(n, dtype=np.int64), **coords})
    for writer in writers.values():
        writer.close()
    bar.close()


def kind_layers_of(lm: LoadedModel, spec: dict, kind: str, layers=None, model_name: str = "model") -> list[int]:
    """The layer indices of one unit kind: `layers` (a call's override) or the spec's `units_layers` for that
    kind (`kind_layers`), resolved against what the kind has. "all" MLP (and ViT activation) layers are every
    block's, hidden states 1..L: the embedding output (0) comes from no MLP; EfficientNet activation layers
    are the stem, each stage and the head (`activation_sites`)."""
    requested = kind_layers(spec, kind) if layers is None else layers
    count = lm.n_hidden_states
    if kind == "activation":
        count = activation_layer_count(lm.model, lm.n_hidden_states)
    where = f"models.{model_name}.units_layers" + (f".{kind}" if isinstance(spec.get("units_layers"), Mapping) else "")
    resolved = resolve_layers(requested, count, where=where)
    from_mlp = kind == "mlp" or (kind == "activation" and not callable(getattr(lm.model, "activation_sites", None))
                                 and _model_type(lm.model) not in POST_RELU_HIDDEN_STATES)
    if requested == "all" and from_mlp:
        resolved = [i for i in resolved if i != 0]
    return resolved


def _model_type(model: torch.nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(getattr(config, "vision_config", None) or config, "model_type", None)


def units_path(folder: str | Path, kind: str) -> Path:
    """The store of one unit kind in a model's units folder (`extract_units(..., kinds=...)`)."""
    return Path(folder) / f"{kind}.zarr"


def extract_units(samples_path: str | Path, spec: dict, out_path: str | Path, *, model_name: str,
                  dataset_name: str | None = None, resources_dir: str | Path = "resources",
                  zoo_dir: str | Path = "results/zoo", layers=None, grid: int | None = None,
                  threads: int | None = None, progress: bool = True, store_dtype: str | None = None,
                  window: int = 256, chunk_rows: int | None = None, kinds: Sequence[str] | None = None) -> Path:
    """Un-pooled activations of one model on one dataset -> units store at `out_path` (see the module doc).

    `layers`: hidden-state indices or "all" (default: the spec's `units_layers`, else "all"; for MLP units
    "all" is every block, hidden states 1..L).
    `grid`: cells per side for vision models (default: the spec's `units_grid`, else 8).
    `store_dtype`: "float16" | "float32" (default: the spec's `units_store_dtype`, else float16).
    `window`: samples held in memory at once; `chunk_rows`: positions per Zarr chunk (default ~16 MiB).
    What a unit is comes from the spec's `units` (see `unit_kind`: "mlp" by default for language models).
    `kinds` (e.g. `["mlp", "residual"]`): several kinds from one forward pass instead; `out_path` is then a
    folder holding one store per kind (`units_path(out_path, kind)`), written as a whole or not at all.
    """
    if kinds is None:
        chosen = [unit_kind(spec)]
    else:
        chosen = [unit_kind({**spec, "units": kind}) for kind in kinds]
        if not chosen or len(set(chosen)) != len(chosen):
            raise UnitsError(f"kinds must name each unit kind once, got {list(kinds)}")
    if threads:
        torch.set_num_threads(int(threads))
    store_dtype = store_dtype or spec.get("units_store_dtype", DEFAULT_STORE_DTYPE)
    if store_dtype not in STORE_DTYPES:
        raise UnitsError(f"store_dtype must be one of {sorted(STORE_DTYPES)}, got {store_dtype!r}")
    df, meta = read_samples(samples_path)
    modality = spec.get("modality", "language")
    column = "text" if modality == "language" else "image"
    if column not in df or df[column].isna().any():
        raise UnitsError(f"{samples_path}: {modality} model '{model_name}' needs one {column} per sample; "
                         f"choose datasets with {column}s for it")
    lm = load_model(spec, resources_dir, zoo_dir=zoo_dir)
    per_kind = {kind: kind_layers_of(lm, spec, kind, layers, model_name) for kind in chosen}
    ids = df["sample_id"].tolist()
    if modality == "language":
        inputs = TextUnits(lm, df["text"].tolist(), ids, int(spec.get("max_length", 128)), units=chosen)
        if "mlp" in chosen:
            mlp_sites(inputs.net, per_kind["mlp"], lm.n_hidden_states)  # fail before any forward pass
        rule = {"positions": "word", "word_pattern": WORD_PATTERN}
    else:
        inputs = ImageUnits(lm, df["image"].tolist(), int(grid or spec.get("units_grid", DEFAULT_GRID)),
                            units=chosen, activation_layers=per_kind.get("activation", ()))
        rule = {"positions": "cell", "grid": inputs.grid}
    attrs = {
        **network_attrs(model_name, spec, lm, meta, dataset_name, len(df)),
        **rule,
        "store_dtype": store_dtype,
        "n_positions": int(inputs.n_positions.sum()),
    }
    with atomic_path(out_path) as tmp:
        if kinds is None:
            outs = {chosen[0]: tmp}
        else:
            tmp.mkdir()
            outs = {kind: units_path(tmp, kind) for kind in chosen}
        write_units(inputs, ids, outs, per_kind, batch_size=int(spec.get("batch_size", 32)), window=int(window),
                    store_dtype=STORE_DTYPES[store_dtype],
                    attrs={kind: {**attrs, "units": kind, "layers": [int(x) for x in per_kind[kind]]} for kind in chosen},
                    progress=progress, chunk_rows=chunk_rows)
    return Path(out_path)


# ---------------------------------------------------------------- reading


REQUIRED_ATTRS = ("model", "modality", "positions", "n_positions", "layers")


def open_units(path: str | Path) -> xr.Dataset:
    """Open a units store lazily and check it is complete (layout, attributes, number of positions)."""
    return open_checked(path, UNITS_DIMS, REQUIRED_ATTRS, ("sample_id", "unit_pos"), "n_positions",
                        "convergence.rosetta.units", error=UnitsError)


def units_array(path: str | Path):
    """The store's `activations` as a zarr array (numpy slices, `.chunks`): for streamed reads."""
    import zarr

    return zarr.open_group(str(path), mode="r")["activations"]
