"""The Rosetta stage on stores: units stores -> correlations -> matches -> Rosetta sets -> null excess.

Every function reads and writes files (atomically) so that Snakemake rules stay one call each:

- `correlate_units(units_a, units_b, out.npz)`: exact Pearson between every unit of A and every unit of
  B over all shared positions, kept as top-K partners in both directions (`TopKPartners`), plus the same
  for the rotation null. A unit is a (layer, neuron) pair: the layers of a store are flattened.
- `match_units(corr.npz, out.parquet)`: strict and relaxed mutual matches (+ Hungarian per layer pair
  when the dense matrix was kept), a table, and a JSON summary next to the rotation null.
- `rosetta_sets_from_pairs({(a, b): corr.npz}, models, out.parquet)`: units matched across >= 3 models.
- `null_excess_table(summaries, controls)`: trained pairs next to the rotation null and their
  random-init controls.

Correlation file (`.npz`, `load_correlation` reads it):

- `obs_<field>` for the fields of `TopKPartners` (`a_index`, `a_r`, `b_index`, `b_r`, `const_a`,
  `const_b`, `max_abs_r`, `absolute`): observed; `null_<field>`: the same with a leading axis of R
  rotation-null draws (indices int32), when the null was computed; `shuffle_<field>`: the same for the
  shuffled-images null (vision stores, `shuffle_draws`);
- `units_a_layer`, `units_a_neuron` `[Da]` (and `units_b_*`): the (hidden-state layer, neuron) of each
  flat unit index (flat index = layer slot * width + neuron);
- `obs_dense`, `null_dense` `[Da, Db]` float32, only when `Da * Db <= dense_max_entries` (small pairs;
  enables Hungarian matching);
- `meta`: a JSON string (models, dataset, positions, k, seed, layers, timings, ...).

Rotation null (R seeded draws): within every layer of one model (the one with narrower layers), the units
are z-scored and then mixed by a Haar-random orthogonal matrix (block-diagonal over layers: one rotation
per draw, `null_seeds`, shared by the layers, so the rotated basis is one basis for the whole model as the
unit basis was; made once per draw however many column blocks the pair takes). No draw reads the data
again: Pearson of the rotated units with B is diag(QᵀΣQ)^(-1/2)·QᵀR per layer, Σ the layer's correlation
matrix (accumulated in the observed pass) and R the observed correlations (`rotated_correlations`;
`layer_rotations` gives the per-layer variant). This keeps each layer's
information (and its correlation structure up to rotation) but removes its privileged unit basis; the
matches found on it are chance matches. Units are z-scored first because Pearson ignores unit scales and
the null must too: rotating raw values lets a few high-variance units (e.g. LM "massive activation"
dimensions) dominate every rotated unit. Rotating all layers jointly would need one `(L·D)²` matrix and
would also mix layers. (`convergence.rosetta.rotation_null` rotates raw values of one matrix.)
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from convergence.rosetta.units import POSITION_DIM, UnitsError, open_units, units_array
from convergence.utils import atomic_path

from .correlation import pearson
from .matching import TopKPartners, _max_abs, _ranking_scores, _RunningTopK, _sorted_matches, _top, mutual_matches
from .matching import hungarian as hungarian_assignment
from .null import compare_to_null, null_band, random_rotation, shuffled_image_rows
from .sets import rosetta_sets
from .sources import ColumnView, read_rows

# Pairs with at most this many unit pairs are correlated densely: the full matrix (and the null's)
# is kept in the .npz, float32, so that Hungarian matching can run on it. 4M entries = 2 x 16 MB;
# e.g. MiniLM-L6 x MiniLM-L6 over all 7 layers (2688^2 = 7.2M) streams instead unless this is raised.
DENSE_MAX_ENTRIES = 4_000_000
# R rotation draws of the null, and what one column block of B may take: float64 co-moments, the float32
# GEMM output, r and a null draw's r and scores, ~BYTES_PER_ENTRY bytes per unit pair.
DEFAULT_NULL_DRAWS = 20
DEFAULT_K_BACK = 5  # the Rosetta Neurons reference's n = 5
DEFAULT_BLOCK_BYTES = 1536 * 2**20
BYTES_PER_ENTRY = 28
# The R rotations of a pair correlated in several column blocks are kept between blocks up to this size.
ROTATION_CACHE_BYTES = 512 * 2**20
TOPK_FIELDS = ("a_index", "a_r", "b_index", "b_r", "const_a", "const_b", "max_abs_r", "absolute")
CRITERIA = ("strict", "relaxed")


# ---------------------------------------------------------------- reading stores as [N, units]


class FlatUnits:
    """Lazy `[N, L*D]` view of a `(position, layer, neuron)` array: unit `l*D + d` = layer slot l, neuron d.

    `layer_slots` selects layers (indices along the store's layer axis). With `rotations` (`[D, D]`, shared
    by every layer as in `correlate_units`' null, or `[L, D, D]`, one per layer) the view is the rotation
    null: each layer's units are z-scored (`mean`, `std` `[L*D]`, see `unit_moments`) and then mixed by the
    layer's orthogonal matrix, chunk by chunk.
    """

    def __init__(self, array: Any, layer_slots: Sequence[int] | None = None, rotations: np.ndarray | None = None,
                 mean: np.ndarray | None = None, std: np.ndarray | None = None):
        n, n_layers, width = (int(s) for s in array.shape)
        self.array, self.width = array, width
        self.slots = list(range(n_layers)) if layer_slots is None else [int(s) for s in layer_slots]
        self.all_layers = self.slots == list(range(n_layers))
        self.shape = (n, len(self.slots) * width)
        chunks = getattr(array, "chunks", None)
        self.chunks = (int(chunks[0]), self.shape[1]) if chunks else None
        self.rotations = None
        if rotations is not None:
            rotations = np.asarray(rotations, np.float64)
            if rotations.shape == (width, width):  # one rotation shared by every layer
                rotations = np.broadcast_to(rotations, (len(self.slots), width, width))
            if rotations.shape != (len(self.slots), width, width):
                raise ValueError(f"rotations must be [{width}, {width}] or [{len(self.slots)}, {width}, {width}], "
                                 f"got {rotations.shape}")
            if mean is None or std is None:
                raise ValueError("a rotated view needs the units' mean and std (unit_moments)")
            self.rotations = rotations.astype(np.float32)
            self.mean = np.asarray(mean, np.float64)
            self.inv_std = np.where(np.asarray(std) > 0, 1.0 / np.where(np.asarray(std) > 0, std, 1.0), 0.0)

    def __getitem__(self, rows: slice) -> np.ndarray:
        block = self.array[rows.start:rows.stop]
        if not self.all_layers:
            block = block[:, self.slots]
        block = read_rows(np.asarray(block).reshape(len(block), -1), 0, len(block))
        if self.rotations is None:
            return block
        z = ((block - self.mean) * self.inv_std).astype(np.float32)  # float64 arithmetic: no offset cancellation
        d = self.width
        for slot in range(len(self.slots)):
            z[:, slot * d:(slot + 1) * d] = z[:, slot * d:(slot + 1) * d] @ self.rotations[slot]
        return z


def unit_moments(source: Any, chunk_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit mean and standard deviation (float64) of a `[N, D]` source, one streamed pass (Chan merge)."""
    n_rows, dim = source.shape
    step = int(chunk_size or (source.chunks[0] if getattr(source, "chunks", None) else 4096))
    count, mean, m2 = 0, np.zeros(dim), np.zeros(dim)
    for start in range(0, n_rows, step):
        block = np.asarray(source[start:start + step], np.float64)
        rows = len(block)
        block_mean = block.mean(0)
        block_m2 = ((block - block_mean) ** 2).sum(0)
        delta = block_mean - mean
        total = count + rows
        mean = mean + delta * rows / total
        m2 = m2 + block_m2 + delta ** 2 * count * rows / total
        count = total
    std = np.sqrt(m2 / max(count, 1))
    # Constant units (spread at rounding level of their magnitude) stay constant: no signal to rotate in.
    std[std <= 4 * np.finfo(np.float32).eps * np.sqrt(mean ** 2 + std ** 2)] = 0.0
    return mean, std


def layer_rotations(n_layers: int, width: int, seed: int) -> np.ndarray:
    """One Haar-random orthogonal `[width, width]` matrix per layer, reproducible from `seed` (float64).

    `correlate_units` draws one rotation per draw and shares it across layers (`null_rotation`); this is
    the per-layer variant, for comparing the two nulls.
    """
    children = np.random.SeedSequence(int(seed)).spawn(n_layers)
    return np.stack([random_rotation(width, int(c.generate_state(1)[0])) for c in children])


def null_seeds(seed: int, draws: int) -> list[int]:
    """The seed of each rotation-null draw of `correlate_units` (draw q: `random_rotation(width, seeds[q])`)."""
    return [int(c.generate_state(1)[0]) for c in np.random.SeedSequence(int(seed)).spawn(int(draws))]


class _NullRotations:
    """Draw q's rotation (float32 `[w, w]`: the products are float32), made once per draw.

    A pair correlated in several column blocks needs every draw's rotation once per block: the rotations
    are kept between blocks while they fit `cache_bytes` (`ROTATION_CACHE_BYTES`; 20 draws at width 2048
    take 320 MiB), else made again (a QR per draw and block, each under a second at MLP widths; such pairs
    are large and spend far longer in their data passes).
    """

    def __init__(self, width: int, seeds: Sequence[int], cache_bytes: int):
        self.width, self.seeds = width, list(seeds)
        self.keep = len(self.seeds) * width * width * 4 <= cache_bytes
        self._made: dict[int, torch.Tensor] = {}

    def __getitem__(self, q: int) -> torch.Tensor:
        if q in self._made:
            return self._made[q]
        rotation = torch.from_numpy(random_rotation(self.width, self.seeds[q]).astype(np.float32))
        if self.keep:
            self._made[q] = rotation
        return rotation


def check_same_positions(a, b, names: tuple[str, str] = ("a", "b")) -> None:
    """Both units stores must hold the same (sample_id, unit_pos) positions in the same order."""
    kinds = [(ds.attrs.get("positions"), ds.attrs.get("grid")) for ds in (a, b)]
    if kinds[0] != kinds[1]:
        def what(kind):
            return f"grid cells ({kind[1]}x{kind[1]})" if kind[0] == "cell" else f"{kind[0]}s"
        raise UnitsError(
            f"units stores {names[0]} and {names[1]} have different kinds of positions: {what(kinds[0])} vs "
            f"{what(kinds[1])}. Units are compared position by position: correlate language models with "
            "language models, vision models with vision models of the same grid."
        )
    na, nb = a.sizes[POSITION_DIM], b.sizes[POSITION_DIM]
    ida, idb = a["sample_id"].values.astype(object), b["sample_id"].values.astype(object)
    pa, pb = a["unit_pos"].values, b["unit_pos"].values
    m = min(na, nb)
    differ = np.flatnonzero((ida[:m] != idb[:m]) | (pa[:m] != pb[:m]))
    if na == nb and not len(differ):
        return
    first = int(differ[0]) if len(differ) else m

    def at(ids, pos, n):
        return f"({ids[first]!r}, {int(pos[first])})" if first < n else "(end)"

    raise UnitsError(
        f"units stores {names[0]} and {names[1]} hold different positions ({na} vs {nb}; first difference at "
        f"position {first}: {at(ida, pa, na)} vs {at(idb, pb, nb)}). Extract both from the same "
        "samples.parquet (language: the same texts give the same words for every tokenizer)."
    )


def _unit_labels(ds, slots: list[int]) -> tuple[np.ndarray, np.ndarray]:
    layers = ds["layer"].values[slots]
    width = ds.sizes["neuron"]
    return np.repeat(layers, width).astype(np.int64), np.tile(np.arange(width), len(slots)).astype(np.int64)


def _layer_slots(ds, layers, name: str) -> list[int]:
    available = [int(x) for x in ds["layer"].values]
    if layers is None:
        return list(range(len(available)))
    missing = [x for x in layers if int(x) not in available]
    if missing:
        raise UnitsError(f"units store {name} has layers {available}, not {missing}")
    return [available.index(int(x)) for x in layers]


# ---------------------------------------------------------------- correlation


@dataclass
class Correlation:
    """A correlation file in memory: partners (observed, R null draws), unit labels, optional dense matrices."""

    observed: TopKPartners
    nulls: list[TopKPartners]
    units_a: pd.DataFrame  # columns layer, neuron; row = flat unit index
    units_b: pd.DataFrame
    meta: dict
    dense: np.ndarray | None = None
    null_dense: np.ndarray | None = None
    shuffles: list[TopKPartners] = field(default_factory=list)  # shuffled-images null draws (vision)

    @property
    def null(self) -> TopKPartners | None:
        """The first null draw (None without a null)."""
        return self.nulls[0] if self.nulls else None


def correlate_units(units_a: str | Path, units_b: str | Path, out_path: str | Path, *, k: int = 10, seed: int = 0,
                    rotation_null: bool = True, null_draws: int = DEFAULT_NULL_DRAWS, null_k: int | None = None,
                    shuffle_draws: int = 0, chunk_size: int | None = None, layers_a=None, layers_b=None,
                    absolute: bool = False, dense_max_entries: int = DENSE_MAX_ENTRIES, max_block_bytes: int | None = None) -> Path:
    """Top-`k` Pearson partners of every unit of A among B's units and back, observed and `null_draws` rotation nulls.

    Exact Pearson over all positions, streamed `chunk_size` positions at a time (memory independent of N),
    in column blocks of B of at most `max_block_bytes` of co-moments (one pass over the data each; default
    one block for pairs up to ~9k x 9k units). The R rotation nulls cost no further pass (module doc): the
    pass also accumulates the rotated model's per-layer correlation matrix Σ, and each draw is then
    `diag(QᵀΣQ)^(-1/2) Qᵀ R` per layer, with the model of narrower layers rotated (its `D x D` products
    are the cheaper ones). Null partners keep `null_k` (default `k`) per unit.
    `Da * Db <= dense_max_entries`: the observed matrix and the first null draw's are stored too (enables
    Hungarian matching). `layers_a`/`layers_b`: hidden-state indices to use (default: all the store holds).
    `absolute`: rank partners by |r|. Writes the `.npz` described in the module doc; returns its path.
    `shuffle_draws` (vision stores only): that many shuffled-images nulls (`null.shuffled_image_rows`: B's
    units on another image, cell for cell), each a full Pearson pass over B held in memory (a vision store
    is small: positions x units x 2 bytes), kept as `shuffle_*` partners (`null_k` per unit).
    """
    t0 = time.time()
    ds_a, ds_b = open_units(units_a), open_units(units_b)
    check_same_positions(ds_a, ds_b, (str(units_a), str(units_b)))
    slots_a, slots_b = _layer_slots(ds_a, layers_a, str(units_a)), _layer_slots(ds_b, layers_b, str(units_b))
    a = FlatUnits(units_array(units_a), slots_a)
    b = FlatUnits(units_array(units_b), slots_b)
    dim_a, dim_b = a.shape[1], b.shape[1]
    draws = int(null_draws) if rotation_null else 0
    if rotation_null and draws < 1:
        raise ValueError(f"null_draws must be >= 1 with rotation_null, got {null_draws}")
    null_k = int(null_k or k)
    rotate_b = draws > 0 and b.width < a.width
    x, y = (b, a) if rotate_b else (a, b)
    dim_x, dim_y = x.shape[1], y.shape[1]
    blocks = [(s * x.width, (s + 1) * x.width) for s in range(len(x.slots))]
    budget = int(max_block_bytes or DEFAULT_BLOCK_BYTES)
    columns = max(1, min(dim_y, budget // (BYTES_PER_ENTRY * dim_x)))
    dense = dim_a * dim_b <= dense_max_entries
    observed = _PartnerBuilder(dim_x, int(k), absolute)
    nulls = [_PartnerBuilder(dim_x, null_k, absolute) for _ in range(draws)]
    n_blocks = -(-dim_y // columns)
    rotations = _NullRotations(x.width, null_seeds(seed, draws), ROTATION_CACHE_BYTES if n_blocks > 1 else 0)
    obs_dense, null_dense, sigma = [], [], None
    timing = {"pass": 0.0, "null": 0.0, "rotations": 0.0, "shuffle": 0.0}
    for start in range(0, dim_y, columns):
        t = time.time()
        part = pearson(x, ColumnView(y, slice(start, start + columns)), chunk_size=chunk_size, dtype=np.float32,
                       self_blocks=blocks if draws and sigma is None else None)
        timing["pass"] += time.time() - t
        if draws and sigma is None:
            sigma = torch.from_numpy(np.stack(part.self_r).astype(np.float32))  # [L, w, w], once per pair
        observed.add(part.r, start, part.const_a, part.const_b)
        if dense:
            obs_dense.append(part.r)
        for q in range(draws):
            t = time.time()
            rotation = rotations[q]
            timing["rotations"] += time.time() - t
            t = time.time()
            null_r, const_null = rotated_correlations(part.r, sigma, rotation)
            nulls[q].add(null_r, start, const_null, part.const_b)
            if dense and q == 0:
                null_dense.append(null_r)
            timing["null"] += time.time() - t
    shuffles, t = [], time.time()
    if shuffle_draws:
        if ds_b.attrs.get("positions") != "cell":
            raise UnitsError(f"shuffle_draws: the shuffled-images null is for vision units (grid cells); "
                             f"{units_b} holds {ds_b.attrs.get('positions')} positions")
        rows = shuffled_image_rows(ds_b["sample_id"].values, ds_b["unit_pos"].values, seed, int(shuffle_draws))
        whole_b = np.asarray(units_array(units_b)[:])
        columns_ab = max(1, min(dim_b, budget // (BYTES_PER_ENTRY * dim_a)))
        for index in rows:
            shuffled = FlatUnits(whole_b[index], slots_b)
            builder = _PartnerBuilder(dim_a, null_k, absolute)
            for start in range(0, dim_b, columns_ab):
                part = pearson(a, ColumnView(shuffled, slice(start, start + columns_ab)), chunk_size=chunk_size,
                               dtype=np.float32)
                builder.add(part.r, start, part.const_a, part.const_b)
            shuffles.append(builder.result())
        del whole_b
    timing["shuffle"] = time.time() - t
    observed = observed.result()
    nulls = [n.result() for n in nulls]
    if rotate_b:
        observed, nulls = observed.transpose(), [n.transpose() for n in nulls]
    obs_dense = _join_columns(obs_dense, rotate_b)
    null_dense = _join_columns(null_dense, rotate_b)
    la, na = _unit_labels(ds_a, slots_a)
    lb, nb = _unit_labels(ds_b, slots_b)
    meta = {
        "model_a": ds_a.attrs["model"], "model_b": ds_b.attrs["model"],
        "units_a": str(units_a), "units_b": str(units_b),
        "unit_kind_a": ds_a.attrs.get("units", "residual"), "unit_kind_b": ds_b.attrs.get("units", "residual"),
        "dataset": ds_a.attrs.get("dataset", ""), "modality_a": ds_a.attrs.get("modality"),
        "modality_b": ds_b.attrs.get("modality"), "positions": ds_a.attrs.get("positions"),
        "grid": ds_a.attrs.get("grid"), "n_positions": int(ds_a.sizes[POSITION_DIM]),
        "n_samples": int(ds_a.attrs.get("n_samples", 0)),
        "layers_a": [int(v) for v in ds_a["layer"].values[slots_a]],
        "layers_b": [int(v) for v in ds_b["layer"].values[slots_b]],
        "width_a": a.width, "width_b": b.width, "n_units_a": dim_a, "n_units_b": dim_b,
        "init_a": ds_a.attrs.get("init"), "init_b": ds_b.attrs.get("init"),
        "k": int(k), "null_k": null_k if draws else None, "seed": int(seed), "absolute": bool(absolute),
        "rotation_null": bool(draws), "null_draws": draws,
        "null": (f"Haar rotation of {'B' if rotate_b else 'A'}'s z-scored units, one per draw shared by its "
                 f"layers, {draws} draws" if draws else None),
        "null_rotated": ("b" if rotate_b else "a") if draws else None,
        "shuffle_draws": len(shuffles), "shuffle_null": ("B's units on another image, cell for cell (a derangement "
                                                         f"of the images), {len(shuffles)} draws") if shuffles else None,
        "dense": bool(dense), "n_const_a": int(observed.const_a.sum()), "n_const_b": int(observed.const_b.sum()),
        "column_blocks": int(n_blocks),
        "seconds_pass": round(timing["pass"], 3), "seconds_rotations": round(timing["rotations"], 3),
        "seconds_null_products": round(timing["null"], 3), "seconds_shuffle": round(timing["shuffle"], 3),
        "seconds_total": round(time.time() - t0, 3),
    }
    arrays: dict[str, np.ndarray] = {"units_a_layer": la, "units_a_neuron": na, "units_b_layer": lb,
                                     "units_b_neuron": nb, "meta": np.array(json.dumps(meta))}
    for key, value in observed.as_dict().items():
        arrays[f"obs_{key}"] = np.asarray(value)
    if nulls:
        for key, value in _stack_partners(nulls).items():
            arrays[f"null_{key}"] = value
    if shuffles:
        for key, value in _stack_partners(shuffles).items():
            arrays[f"shuffle_{key}"] = value
    if obs_dense is not None:
        arrays["obs_dense"] = obs_dense
    if null_dense is not None:
        arrays["null_dense"] = null_dense
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would append .npz
        np.savez_compressed(f, **arrays)
    return out_path


def rotated_correlations(r: np.ndarray, self_r, rotation) -> tuple[np.ndarray, np.ndarray]:
    """Pearson of `Z_l Q` (each layer's z-scored units rotated) with B's units, from the observed `r` alone.

    `r [L*D, Db]`: observed correlations of the rotated model's units (rows) with B; `self_r [L, D, D]`
    (array, tensor or list): the correlation matrix Σ_l of each layer (constant units: zero rows and
    columns); `rotation`: one orthogonal `[D, D]` shared by every layer, or `[L, D, D]`, one per layer.
    For U = Z Q: cov(U, B)/σ_B = Qᵀ R and var(U) = diag(Qᵀ Σ Q), so r_null = diag(QᵀΣQ)^(-1/2) Qᵀ R
    exactly: the same as streaming the rotated data again. float32 products. Returns r_null (float32) and
    the mask of rotated units that are constant (a layer whose units are all constant).
    """
    sigma = torch.as_tensor(np.asarray(self_r, np.float32)) if not isinstance(self_r, torch.Tensor) else self_r.float()
    n_layers, width = sigma.shape[0], sigma.shape[1]
    q = torch.as_tensor(np.asarray(rotation, np.float32)) if not isinstance(rotation, torch.Tensor) else rotation.float()
    if q.shape not in ((width, width), (n_layers, width, width)) or r.shape[0] != n_layers * width:
        raise ValueError(f"r [{r.shape[0]}, .] holds {n_layers} layers of {width} units? rotation {tuple(q.shape)}, "
                         f"self_r {tuple(sigma.shape)}")
    var = (torch.matmul(sigma, q) * q).sum(-2).double()  # [L, D]: q_jᵀ Σ_l q_j = diag(QᵀΣ_lQ)
    dead = var <= 1e-6
    inv = torch.where(dead, 0.0, 1.0 / torch.sqrt(torch.where(dead, 1.0, var))).float()
    r3 = torch.from_numpy(np.ascontiguousarray(r, np.float32)).view(n_layers, width, -1)
    out = torch.empty_like(r3)
    for layer in range(n_layers):
        q_l = q if q.ndim == 2 else q[layer]
        torch.mm(q_l.T, r3[layer], out=out[layer])
    out.mul_(inv[:, :, None]).clamp_(-1.0, 1.0)
    return out.view(n_layers * width, -1).numpy(), dead.reshape(-1).numpy()


class _PartnerBuilder:
    """Top-k partners of a `[Dx, Dy]` correlation matrix that arrives in column blocks."""

    def __init__(self, dim_x: int, k: int, absolute: bool):
        self.k, self.absolute = k, absolute
        self.rows = _RunningTopK(dim_x, k)
        self.col_index, self.col_r, self.const_y = [], [], []
        self.const_x = None
        self.max_abs = 0.0

    def add(self, r: np.ndarray, offset: int, const_x: np.ndarray, const_y: np.ndarray) -> None:
        scores = _ranking_scores(torch.from_numpy(r), const_x, const_y, self.absolute)
        self.rows.add(scores, r, offset)
        index, values = _top(scores, r, self.k, dim=0)
        self.col_index.append(index)
        self.col_r.append(values)
        self.const_y.append(np.asarray(const_y, bool))
        self.const_x = np.asarray(const_x, bool)
        self.max_abs = max(self.max_abs, _max_abs(r, const_x, const_y))

    def result(self) -> TopKPartners:
        a_index, a_r = self.rows.result()
        return TopKPartners(a_index, a_r, np.concatenate(self.col_index), np.concatenate(self.col_r), self.const_x,
                            np.concatenate(self.const_y), self.max_abs, self.absolute)


def _join_columns(parts: list[np.ndarray], transpose: bool) -> np.ndarray | None:
    if not parts:
        return None
    joined = np.concatenate(parts, axis=1)
    return np.ascontiguousarray(joined.T) if transpose else joined


def _stack_partners(draws: list[TopKPartners]) -> dict[str, np.ndarray]:
    """R draws' partners as arrays with a leading draw axis (indices int32)."""
    out = {}
    for key in TOPK_FIELDS:
        values = np.stack([np.asarray(getattr(d, key)) for d in draws])
        out[key] = values.astype(np.int32) if key.endswith("_index") else values
    return out


def _unstack_partners(content: dict, prefix: str) -> list[TopKPartners]:
    count = content[f"{prefix}_a_index"].shape[0]
    return [TopKPartners.from_dict({f: content[f"{prefix}_{f}"][q] for f in TOPK_FIELDS}) for q in range(count)]


def load_correlation(path: str | Path) -> Correlation:
    """Read a `correlate_units` file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (run snakemake {path})")
    with np.load(path, allow_pickle=False) as data:
        content = {key: data[key] for key in data.files}
    try:
        meta = json.loads(str(content["meta"]))
        observed = TopKPartners.from_dict({f: content[f"obs_{f}"] for f in TOPK_FIELDS})
    except KeyError as e:
        raise ValueError(f"{path} is not a correlation file of convergence.rosetta.stage (missing {e})") from e
    nulls = _unstack_partners(content, "null") if "null_a_index" in content else []
    units = {side: pd.DataFrame({"layer": content[f"units_{side}_layer"], "neuron": content[f"units_{side}_neuron"]})
             for side in "ab"}
    shuffles = _unstack_partners(content, "shuffle") if "shuffle_a_index" in content else []
    return Correlation(observed, nulls, units["a"], units["b"], meta, content.get("obs_dense"),
                       content.get("null_dense"), shuffles)


# ---------------------------------------------------------------- matches


def _match_frame(matches, corr: Correlation, kind: str, null_max: float | None) -> pd.DataFrame:
    ua, ub = corr.units_a, corr.units_b
    frame = pd.DataFrame({
        "kind": kind,
        "unit_a": matches.a, "layer_a": ua["layer"].values[matches.a], "neuron_a": ua["neuron"].values[matches.a],
        "unit_b": matches.b, "layer_b": ub["layer"].values[matches.b], "neuron_b": ub["neuron"].values[matches.b],
        "r": matches.r.astype(np.float32),
    })
    frame["above_null_max"] = np.abs(frame["r"]) > null_max if null_max is not None else False
    return frame


def _per_layer_hungarian(dense: np.ndarray, corr: Correlation, absolute: bool):
    """Hungarian matching inside every layer pair of a dense matrix -> Matches in flat indices."""
    la, lb = corr.units_a["layer"].values, corr.units_b["layer"].values
    const_a, const_b = corr.observed.const_a, corr.observed.const_b
    rows, cols, values = [], [], []
    for layer_a in np.unique(la):
        ia = np.flatnonzero(la == layer_a)
        for layer_b in np.unique(lb):
            ib = np.flatnonzero(lb == layer_b)
            m = hungarian_assignment(dense[np.ix_(ia, ib)], absolute=absolute)
            keep = ~const_a[ia[m.a]] & ~const_b[ib[m.b]]
            rows.append(ia[m.a][keep])
            cols.append(ib[m.b][keep])
            values.append(m.r[keep])
    return _sorted_matches(np.concatenate(rows), np.concatenate(cols), np.concatenate(values), absolute)


def match_units(correlation_npz: str | Path, out_path: str | Path, *, k_relaxed: int = 5,
                hungarian: bool | str = "auto", summary_path: str | Path | None = None) -> tuple[Path, Path]:
    """Mutual matches of a correlation file: a table at `out_path` and a JSON summary.

    Criteria (`kind` column): `strict` — i's best partner is j and j's best is i (mutual best buddies);
    `relaxed` — j in i's top-`k_relaxed` and i in j's (a superset of strict: strict pairs appear in
    both); `hungarian` — one-to-one assignment maximising summed r inside every layer pair. Hungarian
    needs the full matrix, so it runs only when the correlation file kept it (small pairs, see
    `correlate_units`); `hungarian="auto"` skips it otherwise, `True` raises.

    Table (parquet, or CSV if `out_path` ends in .csv): kind, unit_a, layer_a, neuron_a, unit_b, layer_b,
    neuron_b, r, above_null_max (|r| above the largest |r| anywhere in the rotation null).
    Summary (`summary_path`, default `out_path` with suffix .json): per criterion the `NullReport`
    (observed vs rotation-null counts, mean r, excess, above_null_max) and, where the correlation file has
    shuffled-images draws, the same against them under `shuffle`, per layer pair counts and mean r
    of observed and null matches, and the models, dataset and unit counts.
    """
    corr = load_correlation(correlation_npz)
    obs, nulls, meta = corr.observed, corr.nulls, corr.meta
    for kept, what in [(obs.k, "observed")] + [(n.k, "null") for n in nulls[:1]]:
        if k_relaxed > kept:
            raise ValueError(f"k_relaxed={k_relaxed} needs top-{k_relaxed} partners, but {correlation_npz} kept "
                             f"{kept} ({what}): rerun correlate_units with k (and null_k) >= {k_relaxed}")
    absolute = obs.absolute
    null_max = max(n.max_abs_r for n in nulls) if nulls else None
    criteria = {"strict": 1, "relaxed": int(k_relaxed)}
    frames, reports, found, null_found = [], {}, {}, {}
    for name, kk in criteria.items():
        found[name] = mutual_matches(obs, kk, absolute=absolute)
        frames.append(_match_frame(found[name], corr, name, null_max))
        if nulls:
            null_found[name] = [mutual_matches(n, kk, absolute=absolute) for n in nulls]
            reports[name] = compare_to_null(obs, nulls, k=kk, absolute=absolute).as_dict()
        else:
            r = found[name].r
            reports[name] = {"matches_observed": len(r), "mean_r_observed": float(np.mean(r)) if len(r) else None}
        if corr.shuffles:
            reports[name]["shuffle"] = compare_to_null(obs, corr.shuffles, k=kk, absolute=absolute).as_dict()
    run_hungarian = hungarian is True or (hungarian == "auto" and corr.dense is not None)
    if hungarian is True and corr.dense is None:
        raise ValueError(f"{correlation_npz} has no dense matrix (Da x Db above dense_max_entries): Hungarian "
                         "matching needs it; use hungarian='auto' to skip it")
    hungarian_summary: dict[str, Any] = {"skipped": "no dense matrix (pair too large)"}
    if run_hungarian:
        assigned = _per_layer_hungarian(corr.dense, corr, absolute)
        frames.append(_match_frame(assigned, corr, "hungarian", null_max))
        hungarian_summary = {"matches": len(assigned), "mean_r": _mean(assigned.r)}
        if corr.null_dense is not None:
            assigned_null = _per_layer_hungarian(corr.null_dense, corr, absolute)
            hungarian_summary.update(null_matches=len(assigned_null), null_mean_r=_mean(assigned_null.r),
                                     excess_mean_r=_mean(assigned.r) - _mean(assigned_null.r))
            found["hungarian"], null_found["hungarian"] = assigned, [assigned_null]
        else:
            found["hungarian"] = assigned
    table = pd.concat(frames, ignore_index=True)
    summary = {
        **{key: meta.get(key) for key in ("model_a", "model_b", "dataset", "positions", "n_positions", "n_samples",
                                          "layers_a", "layers_b", "n_units_a", "n_units_b", "n_const_a",
                                          "n_const_b", "init_a", "init_b", "k", "absolute", "null",
                                          "shuffle_null")},
        "k_relaxed": int(k_relaxed),
        "correlation": str(correlation_npz),
        **reports,
        "hungarian": hungarian_summary,
        "layer_pairs": _layer_pair_stats(corr, found, null_found),
    }
    out_path = Path(out_path)
    summary_path = Path(summary_path) if summary_path else out_path.with_suffix(".json")
    save_table(table, out_path)
    write_json(summary, summary_path)
    return out_path, summary_path


def _layer_pair_stats(corr: Correlation, found: dict, null_found: dict) -> list[dict]:
    """Per (layer_a, layer_b): counts and mean r of each criterion's observed matches, and the null's
    counts averaged over its draws (`null_<criterion>`) with their SD (`null_<criterion>_sd`)."""
    la, lb = corr.units_a["layer"].values, corr.units_b["layer"].values
    layers_a, layers_b = [int(x) for x in np.unique(la)], [int(x) for x in np.unique(lb)]
    stats = {(x, y): {"layer_a": x, "layer_b": y} for x in layers_a for y in layers_b}

    def per_pair(matches) -> tuple[dict, dict]:
        counts, means = {}, {}
        if len(matches):
            frame = pd.DataFrame({"la": la[matches.a], "lb": lb[matches.b], "r": matches.r})
            for (x, y), group in frame.groupby(["la", "lb"]):
                counts[(int(x), int(y))] = int(len(group))
                means[(int(x), int(y))] = float(group["r"].mean())
        return counts, means

    for name, matches in found.items():
        counts, means = per_pair(matches)
        for key, entry in stats.items():
            entry[name] = counts.get(key, 0)
            entry[f"{name}_mean_r"] = means.get(key)
    for name, draws in null_found.items():
        per_draw = [per_pair(m)[0] for m in draws]
        for key, entry in stats.items():
            values = np.array([c.get(key, 0) for c in per_draw], np.float64)
            entry[f"null_{name}"] = float(values.mean())
            entry[f"null_{name}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return list(stats.values())


def read_summary(path_or_summary: str | Path | dict) -> dict:
    if isinstance(path_or_summary, dict):
        return path_or_summary
    return json.loads(Path(path_or_summary).read_text())


# ---------------------------------------------------------------- Rosetta sets


def rosetta_sets_from_pairs(correlation_npzs: Mapping[tuple[str, str], str | Path], models: Sequence[str],
                            out_path: str | Path, anchor: str | None = None, cycle: bool = True,
                            k_back: int = DEFAULT_K_BACK, summary_path: str | Path | None = None) -> tuple[Path, Path]:
    """Rosetta sets across >= 3 `models` from pairwise correlation files.

    Two variants, each a `mode` of the table:

    - `anchor`, the Rosetta Neurons reference (Dravid et al. 2023, `match_utils/universal.py`): a unit of
      the anchor model whose best partner in model m (top-1) has the anchor unit within its own top
      `k_back` (default 5), for every other model m; the set is the anchor unit with those partners.
      Needs the pairs (anchor, m). `k_back=1` makes it strict (mutual best buddies).
    - `cycle` (`cycle=True`), stricter: strict mutual best buddies (top-1 both ways) in every pair of
      members, so the set is a clique of the match graph and independent of the anchor. Needs all pairs.

    `correlation_npzs[(m, n)]`: a `correlate_units` file of m (as A) with n (as B); either orientation.

    Table (parquet or CSV by suffix), one row per set: `mode`, `set_id` (rank in its mode, best mean r
    first), `anchor`, per model m the columns `{m}_unit` (flat unit index), `{m}_layer`, `{m}_neuron`,
    `{m}_r` (r with the anchor unit; 1 for the anchor), then `mean_r`. Anchor sets also say
    `cycle_consistent` (the set is a strict cycle set too). Summary JSON (default: suffix .json): counts
    per mode and, when every pair has rotation nulls, the same counts on each null draw (draw q of every
    pair at once) as a band: null mean, SD, z-score and empirical p (`null_band`).
    """
    models = list(models)
    anchor = models[0] if anchor is None else anchor
    k_back = int(k_back)
    if k_back < 1:
        raise ValueError(f"k_back must be >= 1, got {k_back}")
    corrs = {}
    for (m, n), path in correlation_npzs.items():
        corr = load_correlation(path)
        stored = (corr.meta.get("model_a"), corr.meta.get("model_b"))
        if stored != (m, n):
            raise ValueError(f"{path} correlates {stored}, but it was given as the pair ({m!r}, {n!r})")
        corrs[(m, n)] = corr
    labels = _labels_per_model(corrs)
    needed = [(anchor, m) for m in models if m != anchor]
    if cycle:
        needed = [(m, n) for i, m in enumerate(models) for n in models[i + 1:]]
    missing = [p for p in needed if p not in corrs and p[::-1] not in corrs]
    if missing:
        mode = "cycle-consistent sets need every pair" if cycle else f"anchor sets need every pair with {anchor!r}"
        raise ValueError(f"{mode}; missing correlations for {missing}")
    modes = {"anchor": dict(k=1, k_back=k_back, cycle=False)}
    if cycle:
        modes["cycle"] = dict(k=1, k_back=1, cycle=True)

    def find(partners):
        return {mode: rosetta_sets(partners, models, anchor, **kw) for mode, kw in modes.items()}

    found = find({pair: c.observed for pair, c in corrs.items()})
    strict_keys = {tuple(u) for u in found["cycle"].units.tolist()} if cycle else set()
    frames, counts = [], {}
    for mode, sets in found.items():
        frame = _sets_frame(sets, labels, mode)
        if mode == "anchor" and cycle:
            frame["cycle_consistent"] = [tuple(u) in strict_keys for u in sets.units.tolist()]
        frames.append(frame)
        counts[mode] = len(sets)
    null_summary = None
    draws = min((len(c.nulls) for c in corrs.values()), default=0)
    if draws:
        per_draw = [find({pair: c.nulls[q] for pair, c in corrs.items()}) for q in range(draws)]
        null_summary = {}
        for mode in modes:
            band = null_band(counts[mode], [len(d[mode]) for d in per_draw])
            null_summary[mode] = {"sets": band["null"], "sets_sd": band["null_sd"], "excess": band["excess"],
                                  "z": band["z"], "p": band["p"], "draws": draws,
                                  "sets_per_draw": [len(d[mode]) for d in per_draw],
                                  "max_mean_r": _max(np.concatenate([d[mode].mean_r for d in per_draw]))}
    table = pd.concat(frames, ignore_index=True)
    if "cycle_consistent" in table:
        table["cycle_consistent"] = table["cycle_consistent"].astype("boolean")
    summary = {"models": models, "anchor": anchor, "k_back": k_back, "cycle": bool(cycle),
               "criteria": {"anchor": f"reference: anchor's top-1 partner has the anchor in its top-{k_back}",
                            **({"cycle": "strict: mutual best buddies in every pair of members"} if cycle else {})},
               "sets": counts, "null": null_summary,
               "dataset": next(iter(corrs.values())).meta.get("dataset"),
               "correlations": {f"{m}__{n}": str(p) for (m, n), p in correlation_npzs.items()}}
    out_path = Path(out_path)
    summary_path = Path(summary_path) if summary_path else out_path.with_suffix(".json")
    save_table(table, out_path)
    write_json(summary, summary_path)
    return out_path, summary_path


def _labels_per_model(corrs: Mapping[tuple[str, str], Correlation]) -> dict[str, pd.DataFrame]:
    labels: dict[str, pd.DataFrame] = {}
    for (m, n), corr in corrs.items():
        for model, units in ((m, corr.units_a), (n, corr.units_b)):
            if model in labels and not labels[model].equals(units):
                raise ValueError(f"model {model!r} has different units (layers) in different correlation files; "
                                 "correlate every pair with the same layers")
            labels[model] = units
    return labels


def _sets_frame(sets, labels: dict[str, pd.DataFrame], mode: str) -> pd.DataFrame:
    columns: dict[str, Any] = {"mode": mode, "set_id": np.arange(len(sets)), "anchor": sets.anchor}
    for column, model in enumerate(sets.models):
        unit = sets.units[:, column]
        columns[f"{model}_unit"] = unit
        columns[f"{model}_layer"] = labels[model]["layer"].values[unit]
        columns[f"{model}_neuron"] = labels[model]["neuron"].values[unit]
        columns[f"{model}_r"] = sets.r_anchor[:, column]
    columns["mean_r"] = sets.mean_r
    return pd.DataFrame(columns)


def set_models(table: pd.DataFrame) -> list[str]:
    """The models of a Rosetta sets table, in column order."""
    return [c[: -len("_unit")] for c in table.columns if c.endswith("_unit")]


# ---------------------------------------------------------------- null excess over controls


def null_excess_table(match_summaries: Mapping[Any, str | Path | dict] | Iterable[str | Path | dict],
                      controls: Mapping[str, str | None]) -> pd.DataFrame:
    """Per trained pair (a, b) and criterion: matches and mean r next to the rotation null and the control.

    `match_summaries`: `match_units` summaries (dicts or JSON paths), as a mapping or any iterable;
    pairs are identified by the models the summaries name. `controls[m]`: the random-init control of
    model m, or None. Trained pairs are those where neither model is some model's control. The control
    pair is (a, control of b), else (control of a, b), in either stored orientation, when it exists.

    Columns: model_a, model_b, criterion, matches, mean_r, null_matches (mean over the null draws),
    null_matches_sd, z_matches, p_matches, null_mean_r, null_mean_r_sd, z_mean_r, p_mean_r, null_draws,
    excess_over_null, excess_mean_r_over_null, above_null_max, null_max_abs_r, control_pair,
    control_matches, control_mean_r, excess_over_control, excess_mean_r_over_control, and against the
    shuffled-images null (vision pairs correlated with `shuffle_draws`; NaN otherwise): shuffle_matches
    (mean over its draws), shuffle_matches_sd, z_shuffle, p_shuffle, shuffle_mean_r, shuffle_draws.
    """
    items = match_summaries.values() if isinstance(match_summaries, Mapping) else match_summaries
    summaries = {}
    for item in items:
        s = read_summary(item)
        summaries[(s["model_a"], s["model_b"])] = s
    control_models = {c for c in controls.values() if c}
    rows = []
    for (a, b), s in sorted(summaries.items()):
        if a in control_models or b in control_models:
            continue
        control = _control_summary(summaries, a, b, controls)
        for criterion in CRITERIA:
            rep = s.get(criterion) or {}
            row = {
                "model_a": a, "model_b": b, "criterion": criterion,
                "matches": rep.get("matches_observed"), "mean_r": _num(rep.get("mean_r_observed")),
                "null_matches": _num(rep.get("matches_null")), "null_matches_sd": _num(rep.get("matches_null_sd")),
                "z_matches": _num(rep.get("z_matches")), "p_matches": _num(rep.get("p_matches")),
                "null_mean_r": _num(rep.get("mean_r_null")), "null_mean_r_sd": _num(rep.get("mean_r_null_sd")),
                "z_mean_r": _num(rep.get("z_mean_r")), "p_mean_r": _num(rep.get("p_mean_r")),
                "null_draws": rep.get("null_draws"),
                "excess_over_null": _num(rep.get("excess_matches")),
                "excess_mean_r_over_null": _num(rep.get("excess_mean_r")),
                "above_null_max": rep.get("above_null_max"), "null_max_abs_r": _num(rep.get("null_max_abs_r")),
                "control_pair": None, "control_matches": np.nan, "control_mean_r": np.nan,
                "excess_over_control": np.nan, "excess_mean_r_over_control": np.nan,
            }
            shuffle = rep.get("shuffle") or {}
            row.update(shuffle_matches=_num(shuffle.get("matches_null")),
                       shuffle_matches_sd=_num(shuffle.get("matches_null_sd")), z_shuffle=_num(shuffle.get("z_matches")),
                       p_shuffle=_num(shuffle.get("p_matches")), shuffle_mean_r=_num(shuffle.get("mean_r_null")),
                       shuffle_draws=shuffle.get("null_draws"))
            if control is not None:
                pair, cs = control
                crep = cs.get(criterion) or {}
                row.update(control_pair=f"{pair[0]}__{pair[1]}", control_matches=_num(crep.get("matches_observed")),
                           control_mean_r=_num(crep.get("mean_r_observed")))
                row["excess_over_control"] = _num(row["matches"]) - row["control_matches"]
                row["excess_mean_r_over_control"] = row["mean_r"] - row["control_mean_r"]
            rows.append(row)
    return pd.DataFrame(rows, columns=[
        "model_a", "model_b", "criterion", "matches", "mean_r", "null_matches", "null_matches_sd", "z_matches",
        "p_matches", "null_mean_r", "null_mean_r_sd", "z_mean_r", "p_mean_r", "null_draws", "excess_over_null",
        "excess_mean_r_over_null", "above_null_max", "null_max_abs_r", "control_pair", "control_matches",
        "control_mean_r", "excess_over_control", "excess_mean_r_over_control", "shuffle_matches",
        "shuffle_matches_sd", "z_shuffle", "p_shuffle", "shuffle_mean_r", "shuffle_draws"])


def _control_summary(summaries: dict, a: str, b: str, controls: Mapping[str, str | None]):
    candidates = []
    if controls.get(b):
        candidates += [(a, controls[b]), (controls[b], a)]
    if controls.get(a):
        candidates += [(controls[a], b), (b, controls[a])]
    for pair in candidates:
        if pair in summaries:
            return pair, summaries[pair]
    return None


# ---------------------------------------------------------------- small helpers


def save_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a DataFrame atomically: parquet, or CSV when `path` ends in .csv."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
    return path


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)


def write_json(data: dict, path: str | Path) -> Path:
    path = Path(path)
    text = json.dumps(_jsonable(data), indent=2, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")
    return path


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _max(values) -> float | None:
    return float(np.max(values)) if len(values) else None


def _num(x) -> float:
    return float("nan") if x is None else float(x)


__all__ = [
    "Correlation", "FlatUnits", "check_same_positions", "correlate_units", "layer_rotations", "load_correlation",
    "rotated_correlations",
    "unit_moments",
    "match_units", "null_excess_table", "read_summary", "read_table", "rosetta_sets_from_pairs", "save_table",
    "set_models", "write_json",
]
