"""Rosetta math: exact streaming Pearson, matching, Rosetta sets, null baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from convergence.rosetta import (
    LayerView,
    PearsonAccumulator,
    RotatedView,
    TopKPartners,
    compare_to_null,
    correlation,
    hungarian,
    mutual_matches,
    null_band,
    pearson,
    pearson_topk,
    random_rotation,
    rosetta_sets,
    rotation_null,
    topk_partners,
)
from convergence.rosetta._centring import centre_rows

TOLERANCE = 1e-6


# ---------------------------------------------------------------- data


def hard_activations(n=3001, dim_a=24, dim_b=17, seed=0):
    """Correlated float32 units with offsets of ±1e3 and scales from 1e-2 to 1e2.

    Offsets ≫ std make the one-pass float32 formula cancel catastrophically (see
    `test_test_data_defeats_naive_float32`), so these catch an inexact implementation.
    """
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 6))

    def model(dim):
        mixed = latent @ rng.standard_normal((6, dim)) + rng.standard_normal((n, dim))
        scale = np.logspace(-2, 2, dim)[rng.permutation(dim)]
        offset = rng.choice([-1e3, 1e3, 3e2], size=dim)
        return (mixed * scale + offset).astype(np.float32)

    return model(dim_a), model(dim_b)


def reference_r(a, b):
    """float64 numpy.corrcoef on the same float32 values."""
    return np.corrcoef(a.astype(np.float64).T, b.astype(np.float64).T)[: a.shape[1], a.shape[1] :]


def as_zarr(x, rows_per_chunk=100):
    store = zarr.create_array(store={}, shape=x.shape, chunks=(rows_per_chunk,) + x.shape[1:], dtype=x.dtype)
    store[:] = x
    return store


def planted_models(n_models=3, n=3000, shared=8, private=24, noise=0.3, seed=0):
    """Models whose units are random except `shared` noisy copies of common latents, permuted.

    Returns the activations and, per model, the column holding each shared latent.
    """
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, shared))
    models, columns = [], []
    for _ in range(n_models):
        copies = latent + noise * rng.standard_normal((n, shared))
        units = np.concatenate([copies, rng.standard_normal((n, private))], axis=1)
        order = rng.permutation(shared + private)
        scale, offset = rng.uniform(0.1, 10, shared + private), rng.uniform(-100, 100, shared + private)
        models.append((units[:, order] * scale + offset).astype(np.float32))
        columns.append(np.argsort(order)[:shared])
    return models, columns


def planted_pairs(columns, m, n):
    return set(zip(columns[m].tolist(), columns[n].tolist()))


# ---------------------------------------------------------------- pearson: exactness


@pytest.mark.parametrize("kind", ["numpy", "torch", "zarr"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pearson_equals_float64_corrcoef(kind, dtype):
    a, b = hard_activations()
    wrap = {"numpy": lambda x: x, "torch": torch.from_numpy, "zarr": as_zarr}[kind]
    # 3001 rows in chunks of 250 (zarr: rounded up to 300): uneven, with a 1-row last chunk.
    result = pearson(wrap(a), wrap(b), chunk_size=250, dtype=dtype)
    assert result.r.dtype == dtype
    assert np.abs(result.r - reference_r(a, b)).max() <= TOLERANCE


def test_accumulator_fed_by_hand_equals_pearson():
    a, b = hard_activations(n=1000, dim_a=5, dim_b=4)
    acc = PearsonAccumulator(5, 4)
    for start, stop in [(0, 3), (3, 500), (500, 501), (501, 1000)]:
        acc.update(torch.from_numpy(a[start:stop]), b[start:stop])
    assert np.abs(acc.result().r - reference_r(a, b)).max() <= TOLERANCE


def test_half_precision_inputs_are_read_as_float32():
    a, b = hard_activations(n=500, dim_a=4, dim_b=4)
    a16 = torch.from_numpy(b[:, ::-1] / 300 + np.random.default_rng(0).standard_normal((500, 4))).half()
    expected = reference_r(a16.float().numpy(), b)
    assert np.abs(pearson(a16, b, chunk_size=77).r - expected).max() <= TOLERANCE


def test_test_data_defeats_naive_float32():
    """The one-pass float32 formula is far off on this data, so the exactness test can fail."""
    a, b = (torch.from_numpy(x) for x in hard_activations())
    n = a.shape[0]
    cov = a.T @ b - torch.outer(a.sum(0), b.sum(0)) / n
    var_a = (a * a).sum(0) - a.sum(0) ** 2 / n
    var_b = (b * b).sum(0) - b.sum(0) ** 2 / n
    naive = (cov / torch.sqrt(torch.outer(var_a, var_b).abs())).numpy()
    error = np.abs(naive - reference_r(*hard_activations()))
    assert np.nanmax(error) > 1e-2 or np.isnan(error).any()


@pytest.mark.parametrize("chunk_size", [1, 7, 1000, 3001, 10_000])
def test_pearson_exact_for_any_chunking(chunk_size):
    a, b = hard_activations(n=1500, dim_a=9, dim_b=5)
    assert np.abs(pearson(a, b, chunk_size=chunk_size).r - reference_r(a, b)).max() <= TOLERANCE


def test_pearson_exact_when_means_drift_between_chunks():
    a, b = hard_activations(n=2000)
    a[1000:] += 5e3  # e.g. positions sorted by layer or by token type
    b[:300] -= 2e3
    assert np.abs(pearson(a, b, chunk_size=128).r - reference_r(a, b)).max() <= TOLERANCE


def test_pearson_keeps_float64_precision_of_float64_inputs():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((1000, 6)) + 1e6  # offset beyond float32's resolution of the spread
    b = a[:, ::-1] + 0.5 * rng.standard_normal((1000, 6))
    assert np.abs(pearson(a, b, chunk_size=99).r - np.corrcoef(a.T, b.T)[:6, 6:]).max() <= TOLERANCE


def massive_activations(n=4000, seed=4):
    """Sparse ReLU-like units and offset units; position 0 is 1e4 × the spread (LM "massive activations")."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 4))
    a = np.maximum(latent @ rng.standard_normal((4, 10)) - 1.5, 0).astype(np.float32)
    b = (latent @ rng.standard_normal((4, 8)) + rng.standard_normal((n, 8)) + 50).astype(np.float32)
    a[0, :4], b[0] = 1e4, 3e4
    return a, b


def test_pearson_exact_on_massive_outliers(monkeypatch):
    """Outlier rows are summed in float64: the float32 path stays within 1e-6."""
    a, b = massive_activations()
    expected = reference_r(a, b)
    assert np.abs(pearson(a, b).r - expected).max() <= TOLERANCE
    assert np.abs(pearson(a, b, gemm_dtype=np.float64, dtype=np.float64).r - expected).max() <= 1e-9
    # The data defeat a float32 GEMM that sums the outlier row with the rest (~1e-5).
    monkeypatch.setattr(correlation, "OUTLIER_RATIO", np.inf)
    assert np.abs(pearson(a, b).r - expected).max() > 1e-6


@pytest.mark.parametrize("chunk_size", [500, 1024, 4000])
def test_pearson_catches_a_single_outlier_in_any_chunk(chunk_size):
    """A lone massive row is caught however many rows share its chunk: with itself counted in its unit's
    rms it could never exceed √rows × the rms (≤ 32 at ≤ 1024 rows, the chunk of wide layers)."""
    a, b = massive_activations()
    assert np.abs(pearson(a, b, chunk_size=chunk_size).r - reference_r(a, b)).max() <= TOLERANCE


def test_pearson_exact_with_outliers_on_both_sides_and_in_self_blocks():
    """Outlier values in A only, B only, and both in one row; each goes through float64 once (no double count)."""
    a, b = massive_activations()
    a[0, :4] = 1.0  # move A's outliers off B's row 0; keep one shared row
    a[1500, 2], a[2500, 7], a[3100, 2], b[2000, 5] = 9e3, 5e3, -2e4, -4e4
    a[2000, 9] = 7e3
    acc = PearsonAccumulator(10, 8, self_blocks=[(0, 5), (5, 10)], block_rows=700)
    for start in range(0, 4000, 1300):
        acc.update(a[start:start + 1300], b[start:start + 1300])
    result = acc.result()
    assert np.abs(result.r - reference_r(a, b)).max() <= TOLERANCE
    full = np.corrcoef(a.T.astype(np.float64))
    assert np.abs(result.self_r[0] - full[:5, :5]).max() <= TOLERANCE
    assert np.abs(result.self_r[1] - full[5:, 5:]).max() <= TOLERANCE


@pytest.mark.parametrize("block_rows", [1, 3, 64, 5000])
def test_pearson_exact_for_any_block_size(block_rows):
    a, b = hard_activations(n=1500, dim_a=9, dim_b=5)
    a[700:] += 3e3  # the mean moves inside a chunk, between its blocks
    acc = PearsonAccumulator(9, 5, block_rows=block_rows, self_blocks=[(0, 4), (4, 9)])
    for start in range(0, 1500, 600):
        acc.update(a[start:start + 600], b[start:start + 600])
    result = acc.result()
    assert np.abs(result.r - reference_r(a, b)).max() <= TOLERANCE
    assert np.abs(result.self_r[1] - np.corrcoef(a[:, 4:].T.astype(np.float64))).max() <= TOLERANCE


@pytest.mark.parametrize("rows", range(1, 10))
def test_centring_kernel_equals_numpy(rows):
    """The fused pass (four rows per sweep, then the rest one by one) against numpy, in float64."""
    rng = np.random.default_rng(rows)
    x = (rng.standard_normal((rows, 13)) * 3 + 40).astype(np.float32)
    shift = np.median(x, axis=0).astype(np.float64)
    out = np.empty_like(x)
    sums, squares, peak = np.full(13, 1.5), np.full(13, 2.5), np.full(13, 3.5)  # earlier calls' partial results
    centre_rows(x, shift, out, sums, squares, peak)
    centred = x.astype(np.float64) - shift
    np.testing.assert_array_equal(out, centred.astype(np.float32))
    np.testing.assert_allclose(sums, 1.5 + centred.sum(0), rtol=1e-14, atol=1e-12)
    np.testing.assert_allclose(squares, 2.5 + (centred**2).sum(0), rtol=1e-14)
    np.testing.assert_array_equal(peak, np.maximum(3.5, np.abs(centred).max(0)))


def test_pearson_result_fields_and_unpacking():
    a, b = hard_activations(n=500, dim_a=4, dim_b=3)
    result = pearson(a, b, chunk_size=64)
    r, const_a, const_b = result
    assert r.shape == (4, 3) and const_a.shape == (4,) and const_b.shape == (3,)
    assert result.n == 500
    assert (np.abs(result.mean_a - a.astype(np.float64).mean(0)) <= 1e-7 * a.astype(np.float64).std(0)).all()
    np.testing.assert_allclose(result.std_b, b.astype(np.float64).std(0), rtol=1e-6)


def test_layer_view_reads_one_layer_of_a_units_store():
    a, b = hard_activations(n=600, dim_a=5, dim_b=5)
    store = as_zarr(np.stack([a, b], axis=1), rows_per_chunk=64)  # (position, layer, neuron)
    result = pearson(LayerView(store, 1), a, chunk_size=100)
    assert np.abs(result.r - reference_r(b, a)).max() <= TOLERANCE


# ---------------------------------------------------------------- pearson: validation, constants


@pytest.mark.parametrize(
    "a, b, message",
    [
        (np.zeros((10, 3)), np.zeros((11, 3)), "same positions"),
        (np.ones((1, 3)), np.ones((1, 2)), "at least 2"),
        (np.ones((10,)), np.ones((10, 2)), "2-D"),
        (np.ones((10, 0)), np.ones((10, 2)), "at least one unit"),
    ],
)
def test_pearson_rejects_bad_shapes(a, b, message):
    with pytest.raises(ValueError, match=message):
        pearson(a, b)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_pearson_rejects_non_finite_values(bad):
    a, b = hard_activations(n=300, dim_a=3, dim_b=3)
    b[257, 1] = bad
    with pytest.raises(ValueError, match="B contains NaN or inf .*row 257"):
        pearson(a, b, chunk_size=100)


def test_constant_units_are_masked_and_reported_never_nan():
    a, b = hard_activations(n=800, dim_a=6, dim_b=5)
    a[:, 1] = 0.0
    a[:, 4] = 1234.5
    b[:, 2] = -7.0
    b[:, 3] = np.where(np.arange(800) % 2, np.float32(1e3), np.nextafter(np.float32(1e3), np.float32(0)))  # 1 ulp
    result = pearson(a, b, chunk_size=300)
    assert result.const_a.tolist() == [False, True, False, False, True, False]
    assert result.const_b.tolist() == [False, False, True, True, False]
    assert np.isfinite(result.r).all()
    assert (result.r[result.const_a] == 0).all() and (result.r[:, result.const_b] == 0).all()
    live = np.ix_(~result.const_a, ~result.const_b)
    with np.errstate(invalid="ignore", divide="ignore"):  # corrcoef divides by the zero spreads
        expected = reference_r(a, b)
    assert np.abs(result.r[live] - expected[live]).max() <= TOLERANCE


def test_constant_units_never_become_partners():
    a, b = hard_activations(n=400, dim_a=4, dim_b=4)
    b[:, 0] = 3.0
    partners = topk_partners(pearson(a, b), k=4)
    assert 0 not in partners.a_index[:, :3]
    assert (partners.a_index[:, 3] == -1).all() and (partners.a_r[:, 3] == 0).all()
    assert (partners.b_index[0] == -1).all()


# ---------------------------------------------------------------- top-k and matching


def test_topk_partners_are_the_k_largest_in_both_directions():
    r = np.random.default_rng(0).uniform(-1, 1, (7, 5)).astype(np.float32)
    partners = topk_partners(r, k=3)
    np.testing.assert_array_equal(partners.a_index, np.argsort(-r, axis=1)[:, :3])
    np.testing.assert_array_equal(partners.b_index, np.argsort(-r.T, axis=1)[:, :3])
    np.testing.assert_array_equal(partners.a_r, -np.sort(-r, axis=1)[:, :3])
    by_abs = topk_partners(r, k=2, absolute=True)
    np.testing.assert_array_equal(by_abs.a_index, np.argsort(-np.abs(r), axis=1)[:, :2])
    assert partners.max_abs_r == np.abs(r).max()


@pytest.mark.parametrize("block_size", [1, 4, 6, 100])
@pytest.mark.parametrize("absolute", [False, True])
def test_streaming_topk_equals_dense_topk(block_size, absolute):
    a, b = hard_activations(n=700, dim_a=8, dim_b=13)
    b[:, 5] = 2.0
    streamed = pearson_topk(a, b, k=3, absolute=absolute, block_size=block_size, chunk_size=128)
    dense = topk_partners(pearson(a, b, chunk_size=128), k=3, absolute=absolute)
    for field in ("a_index", "b_index", "const_a", "const_b"):
        np.testing.assert_array_equal(getattr(streamed, field), getattr(dense, field), err_msg=field)
    np.testing.assert_allclose(streamed.a_r, dense.a_r, atol=1e-6)
    np.testing.assert_allclose(streamed.b_r, dense.b_r, atol=1e-6)
    assert streamed.max_abs_r == pytest.approx(dense.max_abs_r, abs=1e-6)


def test_topk_partners_round_trip_and_transpose():
    partners = topk_partners(np.random.default_rng(1).uniform(-1, 1, (6, 4)), k=2)
    again = TopKPartners.from_dict(dict(np.load(_save(partners))))
    np.testing.assert_array_equal(again.a_index, partners.a_index)
    assert again.max_abs_r == partners.max_abs_r and again.absolute == partners.absolute
    flipped = partners.transpose()
    assert flipped.shape == (4, 6)
    np.testing.assert_array_equal(flipped.a_index, partners.b_index)


def _save(partners):
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **partners.as_dict())
    buffer.seek(0)
    return buffer


HAND_R = np.array([[0.9, 0.8, 0.1], [0.85, 0.2, 0.3], [0.1, 0.7, 0.6]])


@pytest.mark.parametrize(
    "k, k_back, expected",
    [
        (1, None, {(0, 0)}),  # strict: row 2's best (col 1) prefers row 0
        (2, None, {(0, 0), (0, 1), (1, 0), (1, 2), (2, 1), (2, 2)}),
        (1, 2, {(0, 0), (1, 0), (2, 1)}),  # the reference's: best of i, i in partner's top 2
    ],
)
def test_mutual_matches_strict_and_relaxed(k, k_back, expected):
    matches = mutual_matches(HAND_R, k=k, k_back=k_back)
    assert matches.pairs() == expected
    assert list(matches.r) == sorted(matches.r, reverse=True)


def test_mutual_matches_refuses_too_few_stored_partners():
    with pytest.raises(ValueError, match="top-3"):
        mutual_matches(topk_partners(HAND_R, k=2), k=3)
    with pytest.raises(ValueError, match="absolute"):
        mutual_matches(topk_partners(HAND_R, k=1), absolute=True)


def test_planted_shared_units_are_the_strong_mutual_matches():
    models, columns = planted_models()
    for m, n in [(0, 1), (0, 2), (1, 2)]:
        matches = mutual_matches(pearson(models[m], models[n], chunk_size=512))
        strong = {pair for pair, r in zip(zip(matches.a.tolist(), matches.b.tolist()), matches.r) if r > 0.5}
        assert strong == planted_pairs(columns, m, n)


@pytest.mark.parametrize("cycle", [False, True])
@pytest.mark.parametrize("k", [1, 3])
def test_rosetta_sets_recover_planted_latents_across_three_models(cycle, k):
    models, columns = planted_models()
    names = ["x", "y", "z"]
    pairs = {
        ("x", "y"): pearson(models[0], models[1]),
        ("z", "x"): pearson_topk(models[2], models[0], k=k, block_size=10),  # stored the other way round
        ("y", "z"): topk_partners(pearson(models[1], models[2]), k=k),
    }
    sets = rosetta_sets(pairs, names, k=k, cycle=cycle)
    strong = {tuple(row) for row, r in zip(sets.units.tolist(), sets.mean_r) if r > 0.5}
    assert strong == set(zip(*(c.tolist() for c in columns)))
    assert sets.units.shape[1] == 3 and (sets.r_anchor[:, 0] == 1).all()
    assert list(sets.to_frame().columns) == ["x", "y", "z", "r_x", "r_y", "r_z", "mean_r"]
    assert list(sets.mean_r) == sorted(sets.mean_r, reverse=True)


def test_cycle_sets_are_a_subset_of_anchor_sets():
    models, _ = planted_models(private=40, noise=0.8)
    pairs = {(m, n): pearson(models[i], models[j]) for (i, m), (j, n) in _pairs_of(["x", "y", "z"])}
    anchor = {tuple(u) for u in rosetta_sets(pairs, ["x", "y", "z"]).units.tolist()}
    cycle = rosetta_sets(pairs, ["x", "y", "z"], cycle=True)
    assert {tuple(u) for u in cycle.units.tolist()} <= anchor
    for x, y, z in cycle.units.tolist():  # every pair mutually matched, not only with the anchor
        assert (y, z) in mutual_matches(pairs[("y", "z")]).pairs()


def _pairs_of(names):
    indexed = list(enumerate(names))
    return [(p, q) for i, p in enumerate(indexed) for q in indexed[i + 1 :]]


def test_rosetta_sets_need_three_models_and_every_pair():
    models, _ = planted_models(n=300)
    r = pearson(models[0], models[1])
    with pytest.raises(ValueError, match=">= 3"):
        rosetta_sets({("x", "y"): r}, ["x", "y"])
    with pytest.raises(KeyError, match="'x', 'z'"):
        rosetta_sets({("x", "y"): r}, ["x", "y", "z"])


def test_hungarian_recovers_a_planted_permutation():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((2000, 30)).astype(np.float32)
    perm = rng.permutation(30)
    extra = rng.standard_normal((2000, 10))
    b = np.concatenate([a[:, perm] * 3 - 50 + 0.5 * rng.standard_normal((2000, 30)), extra], 1)
    matches = hungarian(pearson(a, b))
    assert len(matches) == 30
    assert dict(zip(matches.a.tolist(), matches.b.tolist())) == {int(p): j for j, p in enumerate(perm)}


# ---------------------------------------------------------------- null baselines


def test_random_rotation_is_orthogonal_and_seeded():
    q = random_rotation(16, seed=3)
    np.testing.assert_allclose(q @ q.T, np.eye(16), atol=1e-12)
    big = random_rotation(300, seed=5)  # truly orthogonal, not merely normalised rows (cf. Gurnee et al.)
    np.testing.assert_allclose(big.T @ big, np.eye(300), atol=1e-12)
    np.testing.assert_array_equal(q, random_rotation(16, seed=3))
    assert not np.allclose(q, random_rotation(16, seed=4))


def test_rotated_view_streams_a_times_q():
    a, _ = hard_activations(n=300, dim_a=6)
    q = random_rotation(6, seed=1)
    rotated = np.concatenate([RotatedView(a, q)[start : start + 64] for start in range(0, 300, 64)])
    np.testing.assert_allclose(rotated, a.astype(np.float64) @ q, rtol=0, atol=1e-3)


def test_planted_matches_exceed_the_rotation_and_control_nulls():
    models, columns = planted_models()
    a, b = models[0], models[1]
    observed = pearson(a, b)
    rotations = compare_to_null(observed, [rotation_null(a, b, seed=s) for s in range(3)])
    control_model = np.random.default_rng(9).standard_normal(a.shape).astype(np.float32)
    control = compare_to_null(observed, pearson(control_model, b))
    # A rotation keeps the shared signal, only smeared over units: its best |r| is well above chance,
    # yet every planted match beats it.
    assert rotations.above_null_max == control.above_null_max == len(columns[0])
    assert rotations.excess_matches > 0 and control.excess_matches > 0
    assert rotations.null_max_abs_r > 0.3 > control.null_max_abs_r
    assert control.excess_mean_r > 0.3


def test_rotated_basis_yields_no_matches_above_the_null():
    """Same information as B, but in a rotated basis: no unit-level match beats the null."""
    models, _ = planted_models(private=0, shared=32, noise=0.1)
    a = (models[0].astype(np.float64) @ random_rotation(32, seed=11)).astype(np.float32)
    b = models[1]
    report = compare_to_null(pearson(a, b), [rotation_null(a, b, seed=s) for s in range(5)])
    assert report.above_null_max <= 1
    assert abs(report.excess_mean_r) < 0.1
    assert report.null_draws == 5


def test_reference_anchor_criterion_reciprocates_within_k_back():
    """Anchor unit 0's best partner in b ranks it 3rd: in a reference set (k_back=5), not in a strict one."""
    ab = np.array([[0.9, 0.1, 0.0, 0.0],
                   [0.95, 0.2, 0.1, 0.0],
                   [0.92, 0.0, 0.3, 0.1],
                   [0.1, 0.0, 0.0, 0.8]])  # column 0 ranks anchor units 1, 2, 0, 3
    ac = np.eye(4) * 0.7 + 0.05
    bc = np.full((4, 4), 0.01)
    pairs = {("a", "b"): ab, ("a", "c"): ac, ("b", "c"): bc}
    reference = rosetta_sets(pairs, ["a", "b", "c"], k=1, k_back=5)
    strict = rosetta_sets(pairs, ["a", "b", "c"], k=1, k_back=1)
    # b's unit 0 is the best partner of anchor units 0, 1, 2 (ranking them 3rd, 1st, 2nd): no one-to-one rule.
    assert {tuple(u) for u in reference.units.tolist()} == {(0, 0, 0), (1, 0, 1), (2, 0, 2), (3, 3, 3)}
    assert {tuple(u) for u in strict.units.tolist()} == {(1, 0, 1), (3, 3, 3)}
    assert not len(rosetta_sets(pairs, ["a", "b", "c"], k=1, k_back=1, cycle=True))  # b-c never match


def test_null_band_by_hand():
    band = null_band(10, [4, 6, 5, 5, 10])
    assert band["null"] == 6.0 and band["null_sd"] == pytest.approx(np.std([4, 6, 5, 5, 10], ddof=1))
    assert band["z"] == pytest.approx(4 / band["null_sd"]) and band["p"] == pytest.approx(2 / 6)  # one draw ties
    assert np.isnan(null_band(3, [3.0])["z"]) and null_band(3, [3.0])["null_sd"] == 0.0
    assert null_band(1.0, [np.nan, 0.5, 0.7])["draws"] == 2
