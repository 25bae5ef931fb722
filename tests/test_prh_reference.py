"""Our alignment matrices against a port of PRH's own pipeline (minyoungg/platonic-rep,
measure_alignment.prepare_features -> compute_score with metrics.mutual_knn), on the stores of a
tiny run: two tiny real architectures extracted on sampled scenes.

The port follows the reference line by line but in float64 (PRH casts to float32 with ``.float()``:
its rounding can reorder near-tied neighbours, which is the reference's noise, not a difference in
method). Where a row's k-th and (k+1)-th similarities are tied (or nearly: duplicate captions give
identical rows), the two may pick different neighbours; those rows are left out, everything else
must be equal exactly (counts of shared neighbours).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convergence import extract as ex
from convergence.alignment import align_stores, clip_threshold
from convergence.store import open_activations, read_values

TOPK = 10
TIE = 1e-9  # a gap below this (in cosine similarity) counts as a tie


def prh_remove_outliers(feats: torch.Tensor, q: float, exact: bool = False) -> torch.Tensor:
    """Port of platonic-rep metrics.remove_outliers (prepare_features' body, q=0.95, exact=False by
    default as measure_alignment's CLI runs it)."""
    if q == 1:
        return feats
    if exact:
        q_val = feats.view(-1).abs().sort().values[int(q * feats.numel())]
    else:
        q_val = torch.quantile(feats.abs().flatten(start_dim=1), q, dim=1).mean()
    return feats.clamp(-q_val, q_val)


def prh_nearest_neighbors(feats: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Port of compute_nearest_neighbors, plus each row's gap between the k-th and (k+1)-th similarity."""
    sims = (feats @ feats.T).fill_diagonal_(-1e8)
    order = sims.argsort(dim=1, descending=True)
    ranked = sims.gather(1, order)
    return order[:, :topk], ranked[:, topk - 1] - ranked[:, topk]


def prh_compute_score(x_feats: torch.Tensor, y_feats: torch.Tensor, topk: int):
    """Port of compute_score(metric='mutual_knn', normalize=True): every layer pair, rows L2-normalised,
    mutual kNN as PRH's masks; returns per layer pair the shared-neighbour counts per row and which
    rows are free of ties, and the best score with its layer pair (first strict maximum, from 0)."""
    counts, clear = {}, {}
    best, best_idx = 0, None
    for i in range(x_feats.shape[1]):
        for j in range(y_feats.shape[1]):
            x = F.normalize(x_feats[:, i], p=2, dim=-1)
            y = F.normalize(y_feats[:, j], p=2, dim=-1)
            knn_a, gap_a = prh_nearest_neighbors(x, topk)
            knn_b, gap_b = prh_nearest_neighbors(y, topk)
            n = knn_a.shape[0]
            rows = torch.arange(n).unsqueeze(1)
            mask_a, mask_b = torch.zeros(n, n, dtype=x.dtype), torch.zeros(n, n, dtype=x.dtype)
            mask_a[rows, knn_a] = 1.0
            mask_b[rows, knn_b] = 1.0
            shared = (mask_a * mask_b).sum(dim=1)
            score = (shared / topk).mean().item()
            counts[i, j] = shared.numpy()
            clear[i, j] = ((gap_a > TIE) & (gap_b > TIE)).numpy()
            if score > best:
                best, best_idx = score, (i, j)
    return counts, clear, best, best_idx


@pytest.fixture(scope="module")
def tiny_run_stores(tiny_models, scenes_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("prh_stores")
    paths = {}
    for arch in ("llama", "bert"):
        spec = {"source": f"local:{tiny_models[arch]}", "batch_size": 8}
        paths[arch] = ex.extract_to_zarr(scenes_small[0], spec, out / f"{arch}.zarr", model_name=arch,
                                         dataset_name="scenes", chunk_size=16, progress=False)
    return paths


def test_mutual_knn_matrix_equals_prh_pipeline_where_no_ties(tiny_run_stores):
    ours = align_stores(tiny_run_stores["llama"], tiny_run_stores["bert"], "mutual_knn", {"topk": TOPK},
                        n_boot=4, n_perm=4)  # the defaults: clip at 0.95, per-sample quantile mean
    assert (ours.preprocessing["clip_quantile"], ours.preprocessing["clip_method"]) == (0.95, "per_sample_mean")
    raw = {arch: read_values(open_activations(p), p) for arch, p in tiny_run_stores.items()}
    feats = {arch: prh_remove_outliers(torch.from_numpy(v).double(), q=0.95) for arch, v in raw.items()}
    for arch, v in raw.items():  # the same threshold
        prh_threshold = torch.quantile(torch.from_numpy(v).double().abs().flatten(start_dim=1), 0.95, dim=1).mean()
        assert clip_threshold(v, 0.95) == pytest.approx(prh_threshold.item(), rel=1e-12)
    counts, clear, best, best_idx = prh_compute_score(feats["llama"], feats["bert"], TOPK)
    n = raw["llama"].shape[0]
    compared = 0
    for (i, j), c in counts.items():
        if clear[i, j].all():
            assert round(ours.matrix[i, j] * n * TOPK) == round(c.sum()), (i, j)
            compared += 1
    assert compared >= 0.5 * len(counts), f"only {compared} of {len(counts)} layer pairs free of ties"
    if all(m.all() for m in clear.values()):
        assert ours.score == pytest.approx(best, abs=1e-12)
        assert (ours.best_layer_a, ours.best_layer_b) == best_idx
