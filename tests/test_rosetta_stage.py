"""The Rosetta stage on units stores: correlate, match, Rosetta sets, null excess, figures."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from convergence.rosetta import mutual_matches, pearson, random_rotation, topk_partners
from convergence.rosetta import stage
from convergence.rosetta.figures import (
    image_units_figure,
    match_summary_figure,
    matches_as_sets,
    null_excess_figure,
    text_units_figure,
)
from convergence.rosetta.stage import (
    FlatUnits,
    correlate_units,
    layer_rotations,
    null_seeds,
    rotated_correlations,
    unit_moments,
    load_correlation,
    match_units,
    null_excess_table,
    read_table,
    rosetta_sets_from_pairs,
)
from convergence.datasets import read_samples
from convergence.rosetta.units import UnitsError, extract_units, split_words, units_array


pytestmark = pytest.mark.usefixtures("one_torch_thread")


N_SAMPLES, PER_SAMPLE = 60, 8  # 480 positions


def write_units_store(path, acts: np.ndarray, model: str, sample_ids=None, unit_pos=None, positions="word",
                      grid=None, layers=None):
    """A units store in the layout of convergence.rosetta.units (position, layer, neuron), written with xarray."""
    n, n_layers, _ = acts.shape
    if sample_ids is None:
        sample_ids = [f"s{i // PER_SAMPLE:03d}" for i in range(n)]
    if unit_pos is None:
        unit_pos = [i % PER_SAMPLE for i in range(n)]
    coords = {"sample_id": ("position", np.array(sample_ids, dtype=object)),
              "unit_pos": ("position", np.array(unit_pos, np.int64)),
              "layer": np.arange(n_layers) if layers is None else np.array(layers)}
    if positions == "word":
        coords["word"] = ("position", np.array([f"w{p}" for p in unit_pos], dtype=object))
    ds = xr.Dataset({"activations": (("position", "layer", "neuron"), acts.astype(np.float32))}, coords=coords)
    ds.attrs = {"model": model, "modality": "language" if positions == "word" else "vision", "positions": positions,
                "n_positions": n, "n_samples": len(set(sample_ids)), "layers": [int(x) for x in coords["layer"]],
                "dataset": "synthetic", "init": "pretrained", "source": f"local:{model}"}
    if grid is not None:
        ds.attrs["grid"] = grid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(path, mode="w", zarr_format=3, consolidated=True,
                   encoding={"activations": {"chunks": (128, n_layers, acts.shape[2])}})
    return path


def planted_stores(root, shapes=((2, 16), (3, 12), (2, 10)), shared=6, noise=0.3, seed=0):
    """Stores whose units are independent noise except `shared` noisy copies of common latents.

    Returns the store paths and, per model, the (layer, neuron) of each latent's copy.
    """
    rng = np.random.default_rng(seed)
    n = N_SAMPLES * PER_SAMPLE
    latent = rng.standard_normal((n, shared))
    paths, where = [], []
    for m, (n_layers, width) in enumerate(shapes):
        acts = rng.standard_normal((n, n_layers, width))
        slots = rng.choice(n_layers * width, shared, replace=False)
        for j, flat in enumerate(slots):
            layer, neuron = divmod(int(flat), width)
            acts[:, layer, neuron] = (latent[:, j] + noise * rng.standard_normal(n)) * rng.uniform(0.5, 5) + 10
        acts = acts * rng.uniform(0.1, 3, width) + rng.uniform(-50, 50, width)  # per-neuron scale and offset
        name = "abc"[m]
        paths.append(write_units_store(root / f"{name}.zarr", acts, name))
        where.append([divmod(int(f), width) for f in slots])
    return paths, where


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    paths, where = planted_stores(root)
    corr = {}
    for i, j in [(0, 1), (0, 2), (2, 1)]:  # (c, b) stored the other way round
        a, b = "abc"[i], "abc"[j]
        corr[(a, b)] = correlate_units(paths[i], paths[j], root / f"{a}__{b}.npz", k=5, chunk_size=100)
    return root, paths, where, corr


def test_planted_units_are_the_strong_strict_matches_far_above_the_rotation_null(planted):
    root, paths, where, corr = planted
    table_path, summary_path = match_units(corr[("a", "b")], root / "a__b.parquet", k_relaxed=3)
    table, summary = read_table(table_path), json.loads(summary_path.read_text())
    planted_pairs = {(la, na, lb, nb) for (la, na), (lb, nb) in zip(where[0], where[1])}
    strict = table[table["kind"] == "strict"]
    strong = strict[strict["r"] > 0.8]  # planted copies: r ~ 0.9
    assert set(zip(strong["layer_a"], strong["neuron_a"], strong["layer_b"], strong["neuron_b"])) == planted_pairs
    # Exactly the planted matches beat the largest |r| the rotation null produced anywhere...
    assert summary["strict"]["above_null_max"] == len(planted_pairs) == strict["above_null_max"].sum()
    assert summary["strict"]["null_max_abs_r"] < 0.8
    # ...and the null finds no strong match at all (6 vs 0), nor the same mean r.
    c = load_correlation(corr[("a", "b")])
    assert len(c.nulls) == 20 and c.meta["null_draws"] == 20  # the default R
    null_counts = np.array([len(mutual_matches(n, 1)) for n in c.nulls])
    assert max((mutual_matches(n, 1).r > 0.8).sum() for n in c.nulls) == 0
    strict_rep = summary["strict"]
    assert strict_rep["matches_null"] == pytest.approx(null_counts.mean())
    assert strict_rep["matches_null_sd"] == pytest.approx(null_counts.std(ddof=1))
    assert strict_rep["z_matches"] == pytest.approx((strict_rep["matches_observed"] - null_counts.mean())
                                                    / null_counts.std(ddof=1))
    assert strict_rep["p_matches"] == (1 + (null_counts >= strict_rep["matches_observed"]).sum()) / 21
    assert summary["strict"]["mean_r_observed"] > summary["strict"]["mean_r_null"] + 0.15
    assert summary["strict"]["z_mean_r"] > 3 and summary["strict"]["p_mean_r"] == pytest.approx(1 / 21)
    # Relaxed matches contain the strict ones; Hungarian ran (the matrix is small enough to keep).
    relaxed = table[table["kind"] == "relaxed"]
    key = ["unit_a", "unit_b"]
    assert set(map(tuple, strict[key].values)) <= set(map(tuple, relaxed[key].values))
    assert summary["relaxed"]["matches_observed"] == len(relaxed) >= len(strict)
    hung = table[table["kind"] == "hungarian"]
    assert len(hung) == 2 * 3 * 12 and summary["hungarian"]["matches"] == len(hung)  # min(16, 12) per layer pair
    assert planted_pairs <= set(zip(hung["layer_a"], hung["neuron_a"], hung["layer_b"], hung["neuron_b"]))
    # Per layer pair statistics add up to the totals.
    per_pair = pd.DataFrame(summary["layer_pairs"])
    assert len(per_pair) == 2 * 3 and per_pair["strict"].sum() == summary["strict"]["matches_observed"]
    assert per_pair["null_strict"].sum() == pytest.approx(summary["strict"]["matches_null"])
    assert summary["model_a"] == "a" and summary["model_b"] == "b" and summary["n_positions"] == 480
    assert not list(root.glob(".*tmp*"))  # atomic writes leave nothing behind


def test_correlation_file_layout_and_streamed_path_equals_dense(planted, tmp_path):
    root, paths, where, corr = planted
    dense = load_correlation(corr[("a", "b")])
    assert dense.dense.shape == (32, 36) and dense.meta["dense"]
    assert dense.units_a["layer"].tolist() == [0] * 16 + [1] * 16 and dense.units_a["neuron"].tolist()[:3] == [0, 1, 2]
    assert dense.observed.k == 5 and dense.observed.a_index.shape == (32, 5) and dense.null is not None
    # Without the dense matrix: pearson_topk over column blocks of B, same partners, no Hungarian.
    streamed_path = correlate_units(paths[0], paths[1], tmp_path / "s.npz", k=5, chunk_size=77,
                                    dense_max_entries=0, max_block_bytes=32 * 32 * 5)
    streamed = load_correlation(streamed_path)
    assert streamed.dense is None and not streamed.meta["dense"]
    for side in ("a", "b"):
        np.testing.assert_array_equal(getattr(streamed.observed, f"{side}_index"),
                                      getattr(dense.observed, f"{side}_index"))
        np.testing.assert_allclose(getattr(streamed.observed, f"{side}_r"), getattr(dense.observed, f"{side}_r"),
                                   atol=1e-5)
        np.testing.assert_array_equal(getattr(streamed.null, f"{side}_index"), getattr(dense.null, f"{side}_index"))
    table, summary = match_units(streamed_path, tmp_path / "s.csv")
    assert "hungarian" not in set(pd.read_csv(table)["kind"])
    assert "skipped" in json.loads(summary.read_text())["hungarian"]
    with pytest.raises(ValueError, match="k_relaxed=7 needs top-7"):
        match_units(streamed_path, tmp_path / "x.parquet", k_relaxed=7)
    with pytest.raises(ValueError, match="no dense matrix"):
        match_units(streamed_path, tmp_path / "x.parquet", hungarian=True)


def test_rotation_null_view_z_scores_then_rotates_each_layer():
    rng = np.random.default_rng(2)
    acts = (rng.standard_normal((301, 3, 4)) * rng.uniform(0.01, 100, (3, 4)) + rng.uniform(-1e3, 1e3, (3, 4)))
    acts = acts.astype(np.float32)
    acts[:, 2, 1] = 7.0  # a constant unit stays constant (no division by zero)
    flat = FlatUnits(acts, layer_slots=[0, 2])
    np.testing.assert_array_equal(flat[10:20], acts[10:20][:, [0, 2]].reshape(10, 8))
    mean, std = unit_moments(flat, chunk_size=50)
    ref = acts[:, [0, 2]].reshape(301, 8).astype(np.float64)
    np.testing.assert_allclose(mean, ref.mean(0), rtol=1e-10)
    np.testing.assert_allclose(std[std > 0], ref.std(0)[std > 0], rtol=1e-9)
    assert std[5] == 0  # layer slot 1 (store layer 2), neuron 1
    q = layer_rotations(2, 4, seed=3)
    np.testing.assert_allclose(q[0] @ q[0].T, np.eye(4), atol=1e-12)
    assert not np.allclose(q[0], q[1]) and np.allclose(q, layer_rotations(2, 4, seed=3))
    z = np.where(std > 0, (ref - mean) / np.where(std > 0, std, 1), 0.0)
    want = np.concatenate([z[:, :4] @ q[0], z[:, 4:] @ q[1]], axis=1)
    got = FlatUnits(acts, [0, 2], q, mean, std)[0:301]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_rotation_nulls_from_sigma_equal_streaming_the_rotated_data(planted):
    """diag(QᵀΣQ)^(-1/2) Qᵀ R from one pass equals Pearson of the rotated, z-scored units streamed again."""
    root, paths, where, corr = planted
    a, b = FlatUnits(units_array(paths[0])), FlatUnits(units_array(paths[1]))  # 2 layers of 16, 3 of 12
    blocks = [(0, 16), (16, 32)]
    observed = pearson(a, b, chunk_size=100, self_blocks=blocks)
    self_r = observed.self_r
    reference = np.corrcoef(np.asarray(a[0:480], np.float64).T)
    for lo, hi in blocks:  # Σ per layer is A's own correlation matrix
        np.testing.assert_allclose(self_r[blocks.index((lo, hi))], reference[lo:hi, lo:hi], atol=1e-6)
    mean, std = unit_moments(a)
    for seed in (1, 2, 3):  # one rotation per layer, and one shared by both layers (the stage's null)
        for q in (layer_rotations(2, 16, seed), random_rotation(16, seed)):
            fast, const = rotated_correlations(observed.r, self_r, q)
            streamed = pearson(FlatUnits(units_array(paths[0]), None, q, mean, std), b, chunk_size=100)
            assert not const.any()
            np.testing.assert_allclose(fast, streamed.r, atol=2e-6)
    # The file's draws are these products: B is narrower, so B is the rotated side of this pair, and draw q
    # rotates every layer of B by random_rotation(12, null_seeds(seed, R)[q]).
    c = load_correlation(corr[("a", "b")])
    assert c.meta["null_rotated"] == "b" and c.meta["column_blocks"] == 1 and c.meta["seed"] == 0
    fb = FlatUnits(units_array(paths[1]))
    on_b = pearson(fb, a, chunk_size=100, self_blocks=[(0, 12), (12, 24), (24, 36)])
    for q in (0, 7):
        rotation = random_rotation(12, null_seeds(0, 20)[q])
        np.testing.assert_allclose(rotation.T @ rotation, np.eye(12), atol=1e-12)  # Haar QR: truly orthogonal
        null_r, _ = rotated_correlations(on_b.r, on_b.self_r, rotation)
        want = topk_partners(null_r, 5).transpose()
        np.testing.assert_array_equal(c.nulls[q].a_index, want.a_index)
        np.testing.assert_array_equal(c.nulls[q].b_index, want.b_index)
        np.testing.assert_allclose(c.nulls[q].a_r, want.a_r, atol=1e-6)


def test_rotation_draws_are_made_once_per_draw_however_many_column_blocks(planted, tmp_path, monkeypatch):
    """A pair in several column blocks gets the same null draws as in one block, from R rotations, not R x blocks."""
    root, paths, where, corr = planted
    whole = load_correlation(corr[("a", "b")])
    original = stage.random_rotation
    for cache, makes in ((stage.ROTATION_CACHE_BYTES, 1), (0, 8)):  # kept between blocks, or made per block
        made = []
        monkeypatch.setattr(stage, "random_rotation", lambda width, seed: made.append(seed) or original(width, seed))
        monkeypatch.setattr(stage, "ROTATION_CACHE_BYTES", cache)
        path = correlate_units(paths[0], paths[1], tmp_path / f"blocks{cache}.npz", k=5, chunk_size=100, null_draws=4,
                               max_block_bytes=4 * 28 * 36)  # 4 of A's 32 units per block (B, 36 units, rotated)
        blocked = load_correlation(path)
        assert blocked.meta["column_blocks"] == 8 and sorted(made) == sorted(null_seeds(0, 4) * makes)
        for q in range(4):  # the first 4 of the file's 20 draws: the same seeds
            np.testing.assert_array_equal(blocked.nulls[q].a_index, whole.nulls[q].a_index)
            np.testing.assert_array_equal(blocked.nulls[q].b_index, whole.nulls[q].b_index)


def test_layer_subsets(planted, tmp_path):
    root, paths, where, corr = planted
    path = correlate_units(paths[0], paths[1], tmp_path / "l.npz", k=2, layers_b=[2], rotation_null=False)
    c = load_correlation(path)
    assert c.units_b["layer"].unique().tolist() == [2] and c.observed.shape == (32, 12) and c.null is None
    with pytest.raises(UnitsError, match="not \\[7\\]"):
        correlate_units(paths[0], paths[1], tmp_path / "m.npz", layers_a=[7])


def test_rosetta_sets_recover_the_planted_units_across_three_models(planted):
    root, paths, where, corr = planted
    table_path, summary_path = rosetta_sets_from_pairs(corr, ["a", "b", "c"], root / "sets.parquet")
    table, summary = read_table(table_path), json.loads(summary_path.read_text())
    want = {tuple(x for unit in units for x in unit) for units in zip(*where)}
    for mode in ("anchor", "cycle"):
        rows = table[(table["mode"] == mode) & (table["mean_r"] > 0.8)]
        got = set(zip(rows["a_layer"], rows["a_neuron"], rows["b_layer"], rows["b_neuron"], rows["c_layer"],
                      rows["c_neuron"]))
        assert got == want, mode
    anchor_rows = table[table["mode"] == "anchor"]
    assert anchor_rows[anchor_rows["mean_r"] > 0.8]["cycle_consistent"].all()
    assert (table["a_r"] == 1).all() and summary["anchor"] == "a" and summary["sets"]["cycle"] >= 6
    assert summary["null"]["cycle"]["sets"] < summary["sets"]["cycle"]
    assert (summary["null"]["anchor"]["max_mean_r"] or 0) < 0.8
    with pytest.raises(ValueError, match="missing correlations for \\[\\('b', 'c'\\)\\]"):
        rosetta_sets_from_pairs({k: v for k, v in corr.items() if k != ("c", "b")}, ["a", "b", "c"],
                                root / "x.parquet")
    with pytest.raises(ValueError, match="correlates \\('a', 'b'\\), but it was given as the pair \\('b', 'a'\\)"):
        rosetta_sets_from_pairs({("b", "a"): corr[("a", "b")], ("a", "c"): corr[("a", "c")]}, ["a", "b", "c"],
                                root / "y.parquet", cycle=False)


def test_mismatched_positions_raise(tmp_path):
    rng = np.random.default_rng(1)
    acts = rng.standard_normal((40, 1, 4))
    a = write_units_store(tmp_path / "a.zarr", acts, "a")
    shifted = write_units_store(tmp_path / "b.zarr", acts, "b", unit_pos=[i % 8 for i in range(1, 41)])
    fewer = write_units_store(tmp_path / "c.zarr", acts[:32], "c")
    cells = write_units_store(tmp_path / "d.zarr", acts, "d", positions="cell", grid=2,
                              unit_pos=[i % 4 for i in range(40)], sample_ids=[f"s{i // 4}" for i in range(40)])
    with pytest.raises(UnitsError, match=r"different positions \(40 vs 40; first difference at position 0: "
                                         r"\('s000', 0\) vs \('s000', 1\)\)"):
        correlate_units(a, shifted, tmp_path / "x.npz")
    with pytest.raises(UnitsError, match=r"different positions \(40 vs 32; first difference at position 32"):
        correlate_units(a, fewer, tmp_path / "x.npz")
    with pytest.raises(UnitsError, match=r"different kinds of positions: words vs grid cells \(2x2\)"):
        correlate_units(a, cells, tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()


def _summary(a, b, strict, mean_r, null=2.0, null_r=0.3):
    rep = {"matches_observed": strict, "mean_r_observed": mean_r, "matches_null": null, "mean_r_null": null_r,
           "excess_matches": strict - null, "excess_mean_r": mean_r - null_r, "above_null_max": strict // 2,
           "null_max_abs_r": 0.5, "null_draws": 1}
    return {"model_a": a, "model_b": b, "strict": rep, "relaxed": dict(rep, matches_observed=strict * 3)}


def test_null_excess_table_sets_trained_pairs_next_to_nulls_and_controls(tmp_path):
    summaries = [_summary("a", "b", 40, 0.7), _summary("a", "b_rand", 10, 0.4), _summary("a_rand", "b", 12, 0.45),
                 _summary("a", "c", 20, 0.6), _summary("a_rand", "b_rand", 3, 0.3)]
    path = tmp_path / "ab.json"
    path.write_text(json.dumps(summaries[0]))
    table = null_excess_table([path] + summaries[1:], {"a": "a_rand", "b": "b_rand", "c": None})
    assert set(zip(table["model_a"], table["model_b"])) == {("a", "b"), ("a", "c")}  # controls are not rows
    row = table[(table["model_a"] == "a") & (table["model_b"] == "b") & (table["criterion"] == "strict")].iloc[0]
    assert row["control_pair"] == "a__b_rand" and row["control_matches"] == 10
    assert row["excess_over_control"] == 30 and row["excess_mean_r_over_control"] == pytest.approx(0.3)
    assert row["excess_over_null"] == 38 and row["null_matches"] == 2
    relaxed = table[(table["model_b"] == "b") & (table["criterion"] == "relaxed")].iloc[0]
    assert relaxed["matches"] == 120 and relaxed["excess_over_control"] == 90
    no_control = table[table["model_b"] == "c"].iloc[0]
    assert pd.isna(no_control["control_pair"]) and np.isnan(no_control["control_matches"])
    assert null_excess_figure(table, tmp_path / "excess.png").stat().st_size > 0


def test_unit_kinds_side_by_side_copy_each_kind_and_its_null_band(tmp_path):
    from convergence.rosetta.report import compare_unit_kinds

    excess, sets = {}, {}
    for kind, strict in (("mlp", 40), ("residual", 5)):
        table = null_excess_table([_summary("a", "b", strict, 0.7, null=10.0), _summary("a", "c", 3, 0.5)],
                                  {"a": None, "b": None, "c": None})
        excess[kind] = tmp_path / f"{kind}.csv"
        table.to_csv(excess[kind], index=False)
        sets[kind] = tmp_path / f"{kind}_sets.json"
        sets[kind].write_text(json.dumps({"anchor": "a", "sets": {"anchor": strict // 2, "cycle": 1},
                                          "null": {"anchor": {"sets": 4.0, "sets_sd": 1.0, "z": strict / 2 - 4,
                                                              "p": 0.05, "draws": 20},
                                                   "cycle": {"sets": 1.0, "sets_sd": 0.5, "z": 0.0, "p": 0.6,
                                                             "draws": 20}}}))
    out = compare_unit_kinds("language", excess, sets, tmp_path / "kinds.csv", tmp_path / "kinds.png")
    assert (tmp_path / "kinds.png").stat().st_size > 0 and len(pd.read_csv(tmp_path / "kinds.csv")) == len(out)
    pairs = out[out["what"] == "matches"]
    assert len(pairs) == 2 * 2 * 2  # kinds x pairs x criteria
    ab = pairs[(pairs["model_b"] == "b") & (pairs["criterion"] == "strict")].set_index("unit_kind")
    assert ab.loc["mlp", "observed"] == 40 and ab.loc["residual", "observed"] == 5
    assert (ab["null"] == 10.0).all() and ab.loc["mlp", "mean_r"] == pytest.approx(0.7)
    counts = out[out["what"] == "sets"].set_index(["unit_kind", "criterion"])
    assert counts.loc[("mlp", "anchor"), "observed"] == 20 and counts.loc[("residual", "anchor"), "z"] == -1.5
    assert counts.loc[("mlp", "cycle"), "null_sd"] == 0.5


# ---------------------------------------------------------------- figures on tiny real runs


def _units(tiny_models, samples, arch, out, **kw):
    spec = {"source": f"local:{tiny_models[arch]}", "batch_size": 8}
    if arch in ("vit", "dinov2", "resnet"):
        spec["modality"] = "vision"
    else:
        spec["units_layers"] = [1, 2]  # MLP units (the default for language models): blocks 0 and 1
    return extract_units(samples, spec, out, model_name=arch, progress=False, **kw)


def test_image_figures_for_a_tiny_vision_run(tiny_models, scenes_small, tmp_path):
    models = ["vit", "dinov2", "resnet"]
    units = {m: _units(tiny_models, scenes_small[0], m, tmp_path / f"{m}.zarr", grid=4) for m in models}
    corr = {(a, b): correlate_units(units[a], units[b], tmp_path / f"{a}__{b}.npz", k=3)
            for a, b in [("vit", "dinov2"), ("vit", "resnet"), ("dinov2", "resnet")]}
    matches, summary = match_units(corr[("vit", "resnet")], tmp_path / "vit__resnet.parquet", k_relaxed=3)
    sets, _ = rosetta_sets_from_pairs(corr, models, tmp_path / "sets.parquet", k_back=3)
    assert len(read_table(sets)) > 0
    outputs = [
        image_units_figure(sets, units, scenes_small[0], tmp_path / "fig" / "sets.png", top_sets=2, top_images=2),
        image_units_figure(matches_as_sets(matches, "vit", "resnet"), units, scenes_small[0],
                           tmp_path / "fig" / "pair.png", top_sets=2, top_images=2),
        match_summary_figure(summary, tmp_path / "fig" / "summary.png"),
    ]
    for path in outputs:
        assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="text figures need language units"):
        text_units_figure(sets, units, tmp_path / "t.png", tmp_path / "t.md")


def test_text_figures_for_a_tiny_language_run(tiny_models, scenes_small, tmp_path):
    units = {m: _units(tiny_models, scenes_small[0], m, tmp_path / f"{m}.zarr") for m in ("bert", "llama")}
    corr = correlate_units(units["bert"], units["llama"], tmp_path / "bert__llama.npz", k=5)
    matches, summary = match_units(corr, tmp_path / "bert__llama.parquet")
    png, md = text_units_figure(matches_as_sets(matches, "bert", "llama"), units, tmp_path / "fig" / "text.png",
                                tmp_path / "fig" / "text.md", samples_path=scenes_small[0], top_sets=3, top_words=4)
    assert png.stat().st_size > 1000
    text = md.read_text()
    assert text.count("## ") == 3 and "**" in text and "| bert (L" not in text.split("\n")[0]
    df, _ = read_samples(scenes_small[0])
    vocabulary = {w for t in df["text"] for w, _, _ in split_words(t)}
    bold = text.split("**")[1::2]
    assert len(bold) == 3 * 4 * 2 and set(bold) <= vocabulary  # every model's top words, highlighted
    assert match_summary_figure(summary, tmp_path / "fig" / "summary.png").stat().st_size > 1000


@pytest.mark.slow
def test_pearson_exact_on_real_smollm2_units(scenes_small, tmp_path):
    """Real SmolLM2-135M units (residual stream and MLP neurons, layers 1 and 30) of the scenes captions:
    streamed float32 Pearson within 1e-6 of float64 corrcoef on the same values."""
    stores = {}
    for kind in ("residual", "mlp"):
        spec = {"source": "offline:smollm2-135m", "units": kind, "units_layers": [1, 30], "batch_size": 8}
        stores[kind] = extract_units(scenes_small[0], spec, tmp_path / f"{kind}.zarr", model_name=f"smollm2-{kind}",
                                     resources_dir=tmp_path / "resources", progress=False, store_dtype="float32")
    residual = np.asarray(units_array(stores["residual"])[:], np.float64).reshape(-1, 2 * 576)
    mlp = np.asarray(units_array(stores["mlp"])[:], np.float64).reshape(-1, 2 * 1536)
    # Found: at word positions (special tokens out, sub-tokens averaged) SmolLM2's residual units have no
    # massive values (max |x - median| / std ≈ 7 here): those sit on the BOS token, which units leave out.
    # Synthetic 1e4× outliers are tested in tests/test_rosetta.py.
    keep = mlp.std(0) > 0
    expected = np.corrcoef(residual.T, mlp[:, keep].T)[: residual.shape[1], residual.shape[1]:]
    got = pearson(residual.astype(np.float32), mlp[:, keep].astype(np.float32), chunk_size=128)
    live = ~got.const_a
    assert np.abs(got.r[live] - expected[live]).max() <= 1e-6


# ---------------------------------------------------------------- privileged bases and the shuffled-images null

GRID, N_IMAGES = 4, 80


def _cell_store(path, acts: np.ndarray, model: str) -> str:
    """A vision units store of `acts [N_IMAGES * GRID², D]` (one layer), rows (image, cell)."""
    n = len(acts)
    ids = [f"img{i // GRID ** 2:03d}" for i in range(n)]
    return write_units_store(path, acts[:, None, :], model, sample_ids=ids, unit_pos=[i % GRID ** 2 for i in range(n)],
                             positions="cell", grid=GRID)


def _smooth(rng, units: int) -> np.ndarray:
    """Independent smooth random maps: per image and unit, white noise averaged over each cell's 3x3
    neighbourhood (circularly): neighbouring cells correlate, images do not. -> rows (image, cell) x units."""
    noise = rng.standard_normal((N_IMAGES, units, GRID, GRID))
    smooth = sum(np.roll(noise, (dy, dx), axis=(2, 3)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 3
    return smooth.transpose(0, 2, 3, 1).reshape(N_IMAGES * GRID ** 2, units)


def _summary_of(tmp_path, a, b, name, **kw):
    corr = correlate_units(a, b, tmp_path / f"{name}.npz", k=3, seed=1, **kw)
    _, summary = match_units(corr, tmp_path / f"{name}.parquet", k_relaxed=3)
    return json.loads(summary.read_text())["strict"], load_correlation(corr)


def test_a_planted_concept_behind_a_nonlinearity_beats_every_null_and_its_rotated_linear_layer_does_not(tmp_path):
    """Two 'models' see the same per-image concepts. Each puts one concept on each unit behind a ReLU (a privileged
    basis, units permuted between models), then a linear layer mixes its ReLU units by an arbitrary rotation (as an
    MBConv projection does). The ReLU units match one to one far above the rotation null, the shuffled-images null
    and a random-init control; the linear layer's units hold the same information but no more matches than its
    rotation null."""
    rng = np.random.default_rng(0)
    d = 24
    concepts = _smooth(rng, d) + rng.standard_normal((N_IMAGES * GRID ** 2, d))  # what is in each image, where
    stores, perms = {}, {}
    for name in ("a", "b"):
        perms[name] = rng.permutation(d)
        relu = np.maximum(concepts[:, perms[name]] + 0.5 * rng.standard_normal(concepts.shape), 0)
        stores[f"{name}_act"] = _cell_store(tmp_path / f"{name}_act.zarr", relu, name)
        stores[f"{name}_lin"] = _cell_store(tmp_path / f"{name}_lin.zarr", relu @ random_rotation(d, seed=ord(name)), name)
    control = np.maximum(_smooth(rng, d) + rng.standard_normal((N_IMAGES * GRID ** 2, d)), 0)  # sees other 'images'
    stores["control"] = _cell_store(tmp_path / "control.zarr", control, "control")
    act, act_corr = _summary_of(tmp_path, stores["a_act"], stores["b_act"], "act", shuffle_draws=5)
    lin, _ = _summary_of(tmp_path, stores["a_lin"], stores["b_lin"], "lin", shuffle_draws=5)
    ctrl, _ = _summary_of(tmp_path, stores["a_act"], stores["control"], "ctrl", rotation_null=False)
    # Every concept's two units are a strict match...
    planted = {(int(np.flatnonzero(perms["a"] == c)[0]), int(np.flatnonzero(perms["b"] == c)[0])) for c in range(d)}
    from convergence.rosetta import mutual_matches as mm

    found = mm(act_corr.observed, 1)
    assert set(zip(found.a.tolist(), found.b.tolist())) == planted
    # ...far above the rotation null, the shuffled-images null and the control...
    assert act["matches_observed"] == d and act["z_matches"] > 3 and act["shuffle"]["z_matches"] > 3
    assert act["shuffle"]["null_draws"] == 5 and act["matches_observed"] > ctrl["matches_observed"] + 10
    # ...while the rotated linear layer is no better than its rotation null.
    assert lin["matches_observed"] < lin["matches_null"] + 3 * lin["matches_null_sd"]
    assert lin["mean_r_observed"] < act["mean_r_observed"] - 0.3


def test_the_shuffled_images_null_keeps_map_autocorrelation_and_layout(tmp_path):
    """Smooth random maps share nothing between the models: no excess over the shuffled-images null. Units that
    share only a layout (the same spot in every image, different content) fool the rotation null, which destroys
    the one-spot-per-unit basis, but not the shuffled-images null, which keeps it."""
    rng = np.random.default_rng(1)
    d = 16
    a = _cell_store(tmp_path / "sa.zarr", _smooth(rng, d), "a")
    b = _cell_store(tmp_path / "sb.zarr", _smooth(rng, d), "b")
    smooth, _ = _summary_of(tmp_path, a, b, "smooth", shuffle_draws=10)
    assert smooth["shuffle"]["z_matches"] < 2 and smooth["z_matches"] < 3
    assert smooth["shuffle"]["excess_matches"] < 3 * smooth["shuffle"]["matches_null_sd"] + 1

    spots = np.eye(GRID ** 2)[rng.permutation(GRID ** 2)[:d]]  # unit u lights cell spots[u] in every image
    layout = np.tile(spots.T, (N_IMAGES, 1)) * 3  # rows (image, cell) x units
    la = _cell_store(tmp_path / "la.zarr", layout + _smooth(rng, d), "a")
    lb = _cell_store(tmp_path / "lb.zarr", layout[:, rng.permutation(d)] + _smooth(rng, d), "b")
    layout_only, _ = _summary_of(tmp_path, la, lb, "layout", shuffle_draws=10)
    assert layout_only["matches_observed"] == d and layout_only["z_matches"] > 3  # the rotation null is fooled
    assert layout_only["shuffle"]["matches_null"] > d - 2  # the shuffled images keep every layout match
    assert layout_only["shuffle"]["excess_matches"] < 2  # (its SD is ~0, so z is undefined: no excess to scale)


def test_shuffled_image_rows_are_derangements_of_whole_images():
    from convergence.rosetta import shuffled_image_rows

    ids = np.repeat([f"i{k}" for k in range(5)], 4)
    pos = np.tile(np.arange(4), 5)
    draws = shuffled_image_rows(ids, pos, seed=3, draws=50)
    assert [d.tolist() for d in draws] == [d.tolist() for d in shuffled_image_rows(ids, pos, seed=3, draws=50)]
    for rows in draws:
        assert np.array_equal(pos[rows], pos)  # the same cell...
        assert (ids[rows] != ids).all()  # ...of another image
        assert sorted(rows.tolist()) == list(range(20))  # every row of B once
    assert len({tuple(d.tolist()) for d in draws}) > 20
    with pytest.raises(ValueError, match="cells 0..C-1 in order"):
        shuffled_image_rows(["a", "a", "b"], [0, 1, 0], seed=0, draws=1)
    with pytest.raises(ValueError, match="at least two images"):
        shuffled_image_rows(["a", "a"], [0, 1], seed=0, draws=1)
