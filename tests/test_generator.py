"""The generator stage's parts: spec checks, the DCGAN, hooks, map edits, frame checks, object measurement,
latent optimisation, matching with its nulls, Rosetta sets with the generator as anchor."""

import copy

import numpy as np
import pytest
import torch

from convergence.generator import edits as E
from convergence.generator import gan
from convergence.generator.latent import Terms, learning_rate, optimize_latents, term_maps
from convergence.generator.maps import cells, generator_layers, generator_maps, recording
from convergence.generator.measure import measure_objects, real_count_accuracy


# ---------------------------------------------------------------- spec and config


def test_generator_spec_needs_a_latent_size():
    with pytest.raises(gan.GeneratorError, match=r"arch\.latent_dim is required"):
        gan.normalize_generator_spec({"arch": "dcgan", "width": 8})
    with pytest.raises(gan.GeneratorError, match="power of two"):
        gan.normalize_generator_spec({"latent_dim": 8, "image_size": 48})
    with pytest.raises(gan.GeneratorError, match="unknown keys"):
        gan.normalize_generator_spec({"latent_dim": 8, "depth": 3})
    assert gan.normalize_generator_spec({"latent_dim": 8}) == {"arch": "dcgan", "latent_dim": 8, "width": 16,
                                                               "image_size": 64}


def _config_with_generator(**entry):
    import yaml

    from convergence.config import REPO_ROOT, merge_overlay

    config = merge_overlay(yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text()),
                           yaml.safe_load((REPO_ROOT / "config" / "full.yaml").read_text()))  # the scenes and the zoo
    config["zoo"]["gan-w16"] = {"kind": "generator", "dataset": "scenes_train", **entry}
    return config


def test_config_names_the_missing_latent_size_and_bad_references():
    from convergence.config import ConfigError, check_config, validate_schema

    config = _config_with_generator(arch={"width": 8})
    with pytest.raises(ConfigError, match=r"'zoo\.gan-w16\.arch\.latent_dim' is required"):
        check_config(validate_schema(copy.deepcopy(config)))
    config = _config_with_generator(arch={"latent_dim": 8}, evaluator="gan-w16")
    with pytest.raises(ConfigError, match=r"'zoo\.gan-w16\.evaluator': 'gan-w16' is not a classifier"):
        check_config(validate_schema(copy.deepcopy(config)))
    config = _config_with_generator(arch={"latent_dim": 8})
    config["models"]["g"] = {"source": "zoo:gan-w16", "modality": "vision"}
    with pytest.raises(ConfigError, match=r"'models\.g\.source': zoo entry 'gan-w16' is a generator"):
        check_config(validate_schema(copy.deepcopy(config)))
    config = _config_with_generator(arch={"latent_dim": 8})
    config["generator"]["models"] = ["minilm-l6"]
    with pytest.raises(ConfigError, match=r"'generator\.models': 'minilm-l6' is not a vision model"):
        check_config(validate_schema(copy.deepcopy(config)))
    ok = check_config(validate_schema(_config_with_generator(arch={"latent_dim": 8})))
    assert ok["zoo"]["gan-w16"]["train"]["steps"] >= 1 and ok["zoo"]["cnn-w32-s0"]["kind"] == "classifier"


# ---------------------------------------------------------------- the DCGAN and its maps


def test_dcgan_shapes_layers_and_seeding():
    state = torch.random.get_rng_state()
    g1 = gan.build_generator({"latent_dim": 8, "width": 4, "image_size": 32}, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())  # building does not move the caller's RNG
    g2 = gan.build_generator({"latent_dim": 8, "width": 4, "image_size": 32}, seed=3)
    z = gan.sample_latents(5, 8, seed=1)
    assert torch.equal(z, gan.sample_latents(5, 8, seed=1))
    images, maps = generator_maps(g1, z, generator_layers(g1))
    assert images.shape == (5, 3, 32, 32) and images.abs().max() <= 1
    assert g1.unit_layers == ("stem", "up1", "up2")
    assert [tuple(m.shape[1:]) for m in maps] == [(16, 4, 4), (8, 8, 8), (4, 16, 16)]
    assert torch.equal(images, g2(z))
    # The hooks see exactly the modules' outputs.
    with torch.no_grad():
        assert torch.equal(maps[1], g1.up1(g1.stem(z)))
    with pytest.raises(gan.GeneratorError, match="has no module"):
        generator_layers(g1, ["up9"])


def test_save_load_round_trip_and_random_control(tmp_path):
    arch = {"latent_dim": 8, "width": 4, "image_size": 32}
    g = gan.build_generator(arch, seed=0)
    gan.save_generator(g, arch, tmp_path / "g", {"note": 1}, np.zeros((2, 32, 32, 3), np.uint8))
    loaded, spec = gan.load_generator(tmp_path / "g")
    z = gan.sample_latents(3, 8, 0)
    assert torch.equal(loaded(z), g(z)) and spec["unit_layers"] == ["stem", "up1", "up2"]
    random_a, _ = gan.load_generator(tmp_path / "g", init="random", seed=5)
    random_b, _ = gan.load_generator(tmp_path / "g", init="random", seed=5)
    assert torch.equal(random_a(z), random_b(z)) and not torch.equal(random_a(z), g(z))
    with pytest.raises(gan.GeneratorError, match="holds no trained generator"):
        gan.load_generator(tmp_path / "missing")


def test_fit_gan_is_seeded_and_rejects_wrong_sizes():
    images = torch.rand(16, 3, 16, 16) * 2 - 1
    arch = {"latent_dim": 4, "width": 2, "image_size": 16}
    a, hist = gan.fit_gan(images, arch, steps=3, batch_size=4, seed=1, progress=False)
    b, _ = gan.fit_gan(images, arch, steps=3, batch_size=4, seed=1, progress=False)
    z = gan.sample_latents(2, 4, 0)
    assert torch.equal(a(z), b(z)) and len(hist["loss_d"]) >= 1
    with pytest.raises(gan.GeneratorError, match=r"makes \[N, 3, 32, 32\]"):
        gan.fit_gan(images, {**arch, "image_size": 32}, steps=1, progress=False)


def test_translation_moves_whole_images_and_replicates_their_edge():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    out = gan.translate(images, 0.25, torch.Generator().manual_seed(0))
    again = gan.translate(images, 0.25, torch.Generator().manual_seed(0))
    assert torch.equal(out, again) and torch.equal(gan.translate(images, 0.0, torch.Generator()), images)
    for b in range(2):  # each image is one shift of itself (by at most 2 px), edges clamped
        found = [(dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)
                 if torch.equal(out[b], images[b][:, (torch.arange(8) + dy).clamp(0, 7)][:, :, (torch.arange(8) + dx).clamp(0, 7)])]
        assert len(found) >= 1


def test_cells_are_bilinear_grid_cells_in_layer_order():
    maps = [torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4), torch.randn(2, 2, 8, 8)]
    rows = cells(maps, grid=4)
    assert rows.shape == (2 * 16, 5)
    # First layer is already 4x4: rows are (image, row-major cell), columns its channels.
    assert torch.equal(rows[:16, :3], maps[0][0].flatten(1).T)
    down = torch.nn.functional.interpolate(maps[1], size=(4, 4), mode="bilinear", align_corners=False)
    assert torch.allclose(rows[16:, 3:], down[1].flatten(1).T)


# ---------------------------------------------------------------- edits and frame checks


def _blob(side: int, cx: float, cy: float, radius: float) -> torch.Tensor:
    """A Gaussian bump at (cx, cy) given in cells (continuous, cell i spans [i, i + 1))."""
    c = torch.arange(side, dtype=torch.float64) + 0.5
    ys, xs = torch.meshgrid(c, c, indexing="ij")
    return torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * radius ** 2)).float()


def _centre(m: torch.Tensor) -> tuple[float, float]:
    cx = torch.arange(m.shape[-1], dtype=torch.float64) + 0.5
    cy = torch.arange(m.shape[-2], dtype=torch.float64) + 0.5
    w = m.double().clamp_min(0)
    return float((w.sum(0) * cx).sum() / w.sum()), float((w.sum(1) * cy).sum() / w.sum())


def test_shift_zoom_duplicate_move_content_as_requested():
    side, image = 32, 64  # one cell = 2 image pixels
    blob = _blob(side, 12.0, 16.0, 1.5)[None]
    moved = E.shift_maps(blob, dx=8, dy=-6, image_size=image)[0]
    x, y = _centre(moved)
    assert x == pytest.approx(12.0 + 4, abs=1e-3) and y == pytest.approx(16.0 - 3, abs=1e-3)
    assert torch.allclose(E.shift_maps(blob, 0, 0, image), blob, atol=1e-6)
    # Zoom x2 about the blob's own centre (image pixels 24, 32): same centre, 4x the area above half max.
    zoomed = E.zoom_maps(blob, 2.0, cx=24.0, cy=32.0, image_size=image)[0]
    assert _centre(zoomed) == pytest.approx((12.0, 16.0), abs=1e-2)
    area = lambda m: float((m > 0.5 * m.max()).sum())  # noqa: E731
    assert area(zoomed) / area(blob[0]) == pytest.approx(4.0, rel=0.15)
    # Zoom about another point moves the centre away from it by the scale.
    far = E.zoom_maps(blob, 2.0, cx=32.0, cy=32.0, image_size=image)[0]
    assert _centre(far)[0] == pytest.approx(16 + 2 * (12 - 16), abs=0.1)  # the edge clips its tail a little
    # Duplicate: the original stays, a copy appears at the offset.
    dup = E.duplicate_maps(blob, dx=24, dy=0, cx=24.0, cy=32.0, image_size=image)[0]
    left, right = dup[:, :18], dup[:, 18:]
    assert _centre(left)[0] == pytest.approx(12.0, abs=1e-2)
    assert _centre(torch.nn.functional.pad(right, (18, 0)))[0] == pytest.approx(24.0, abs=1e-2)
    with pytest.raises(ValueError, match="non-zero offset"):
        E.duplicate_maps(blob, 0, 0, 24, 32, image)


def test_frame_checks_refuse_with_the_valid_range():
    box = E.Box(x0=40, y0=10, x1=55, y1=20)  # 16 x 11 px in a 64 px frame
    E.check_shift(box, 8, -10, 64)
    with pytest.raises(E.EditRefused, match=r"valid dx in \[-40, 8\], dy in \[-10, 43\]"):
        E.check_shift(box, 9, 0, 64)
    # Zoom x2: continuous span [40, 56) -> centre cx in [(2*56 - 64) / 1, 2*40 / 1] = [48, 80].
    (lo, hi), _ = E.zoom_centre_range(box, 2.0, 64)
    assert (lo, hi) == (48.0, 80.0)
    E.check_zoom(box, 2.0, 50.0, 20.0, 64)
    with pytest.raises(E.EditRefused, match=r"valid centres: x in \[48, 80\]"):
        E.check_zoom(box, 2.0, 47.0, 20.0, 64)
    with pytest.raises(E.EditRefused, match=r"largest zoom that fits this object at all is x4\.00"):
        E.check_zoom(box, 2.0, 0.0, 20.0, 64)
    with pytest.raises(E.EditRefused, match=r"copy overlap the object \(16x11 px\); use \|dx\| >= 16"):
        E.check_duplicate(box, -10, 5, 64)
    with pytest.raises(E.EditRefused, match=r"duplicate offset \(20, 0\) puts the copy .* valid dx in \[-40, 8\]"):
        E.check_duplicate(box, 20, 0, 64)
    E.check_duplicate(box, -30, 0, 64)


def test_edit_plans_fit_each_object_and_refuse_only_what_cannot_fit():
    """An object near the right edge: a right shift or copy runs leftwards, a zoom about the nearest centre that
    keeps it inside; what was asked stays recorded. An object too large for x2 is refused, naming the largest zoom."""
    from convergence.generator.inversion import plan_edits

    img = np.full((64, 64, 3), 128, np.uint8)
    img[30:40, 50:60] = (215, 40, 40)  # columns 50..59, rows 30..39, centroid (55, 35)
    big = np.full((64, 64, 3), 128, np.uint8)
    big[10:50, 10:50] = (40, 40, 215)  # 40 px: x2 would be 80 px
    reqs = plan_edits(np.stack([img, big]), shifts=[[16, 0], [-16, 0]], zooms=[2.0], duplicates=[[16, 0]],
                      image_size=64)
    by = {(r.image, r.extra["requested"]): r for r in reqs}
    right = by[(0, "shift (+16, +0)")]
    assert right.refused is None and (right.dx, right.dy) == (-16, 0) and "opposite direction" in right.extra["fitted"]
    left = by[(0, "shift (-16, +0)")]
    assert left.refused is None and left.dx == -16 and "fitted" not in left.extra  # fits as asked
    zoom = by[(0, "zoom x2")]
    # x2 of columns [50, 60) needs a centre x in [(2*60 - 64) / 1, 2*50] = [56, 100]; y: [(80 - 64), 60] = [16, 60].
    assert zoom.refused is None and zoom.centre == (56.0, 35.0) and "nearest centre" in zoom.extra["fitted"]
    copy = by[(0, "duplicate (+16, +0)")]
    assert copy.refused is None and copy.dx == -16
    too_big = by[(1, "zoom x2")]
    assert "valid centres: x in none" in too_big.refused and "largest zoom that fits this object at all is x1.60" \
        in too_big.refused
    # 40 px wide at columns 10..49: 10 px of room on the left, 14 on the right; 16 fits neither way.
    assert all("nor does offset" in r.refused for r in reqs if r.image == 1 and r.kind == "shift")
    strict = plan_edits(img[None], shifts=[[16, 0]], zooms=[], duplicates=[], image_size=64, fit=False)
    assert strict[0].refused is not None and strict[0].dx == 16  # fit=False: refused as asked


# ---------------------------------------------------------------- measurement


def test_measure_objects_on_drawn_and_real_scenes():
    img = np.full((64, 64, 3), 128, np.uint8)
    img[10:20, 30:36] = (215, 40, 40)
    found = measure_objects(img)
    assert found.count == 1 and found.area == 60
    assert found.centroid == (33.0, 15.0) and found.box == E.Box(30, 10, 35, 19)
    img[40:50, 5:15] = (40, 80, 220)
    img[0, 0] = (255, 255, 255)  # a speck below min_area
    assert measure_objects(img).count == 2
    assert measure_objects(np.full((32, 32, 3), 9, np.uint8)).count == 0

    from convergence.datasets.scenes import render_scene

    scenes = [render_scene(0, i, 64) for i in range(60)]
    images = np.stack([np.asarray(s["image"]) for s in scenes])
    assert real_count_accuracy(images, [s["count"] for s in scenes]) >= 0.95


# ---------------------------------------------------------------- latent optimisation


def test_learning_rate_schedule_matches_the_reference():
    assert learning_rate(0, 100, 1.0) < 0.25
    assert learning_rate(50, 100, 1.0) == pytest.approx(1.0)
    assert learning_rate(99, 100, 1.0) < 0.01


def test_optimisation_recovers_maps_of_a_known_latent():
    torch.manual_seed(0)
    g = gan.build_generator({"latent_dim": 6, "width": 4, "image_size": 16}, seed=0)
    layers = list(g.unit_layers)
    terms = Terms(layers=layers, layer=np.array([0, 0, 1, 1]), channel=np.array([0, 3, 1, 2]),
                  mean=np.zeros(4))
    z_true = gan.sample_latents(2, 6, seed=7)
    with torch.no_grad(), recording(g, layers) as store:
        g(z_true)
        target = term_maps([store[n] for n in layers], terms, res=8)
    z0 = gan.sample_latents(2, 6, seed=8)
    weights = torch.ones(2, 4)
    before = optimize_latents(g, terms, target, weights, z0, steps=1, lr=1e-9, res=8, progress=False)
    after = optimize_latents(g, terms, target, weights, z0, steps=150, lr=0.1, res=8, progress=False)
    assert (after.cosine > 0.95).all() and (after.cosine > before.cosine).all()
    assert after.history.shape[1] == 2 and np.all(np.isfinite(after.loss))
    # A zero weight drops a term: a target made useless there changes nothing.
    spoiled = target.clone()
    spoiled[:, 0] = -spoiled[:, 0]
    w = weights.clone()
    w[:, 0] = 0
    same = optimize_latents(g, terms, spoiled, w, z0, steps=5, lr=0.1, res=8, progress=False)
    ref = optimize_latents(g, terms, target, w, z0, steps=5, lr=0.1, res=8, progress=False)
    assert torch.allclose(same.z, ref.z)
    with pytest.raises(ValueError, match="do not fit"):
        optimize_latents(g, terms, target[:, :2], weights, z0, steps=1, lr=0.1, res=8, progress=False)


# ---------------------------------------------------------------- your own generator, matching and sets


class PaintGenerator(torch.nn.Module):
    """A generator whose image is its `paint` layer: 3 maps, upsampled. Its unit c *is* the image's channel c."""

    latent_dim = 6

    def __init__(self, side: int = 16):
        super().__init__()
        self.side = side
        self.fc = torch.nn.Linear(6, 3 * 4 * 4)
        self.paint = torch.nn.Tanh()
        self.unit_layers = ("paint",)

    def forward(self, z):
        maps = self.paint(self.fc(z).view(len(z), 3, 4, 4))
        return torch.nn.functional.interpolate(maps, size=(self.side, self.side), mode="bilinear", align_corners=False)


class PixelModel(torch.nn.Module):
    """A 'vision model' whose only hidden state is its input: its units are the image's RGB channels."""

    def forward(self, pixel_values, output_hidden_states=True):
        from types import SimpleNamespace

        return SimpleNamespace(hidden_states=(pixel_values,))


def _pixel_vision(name="pixels"):
    from types import SimpleNamespace

    from convergence.generator.maps import VisionMaps

    def processor(images, return_tensors):
        arr = np.stack([np.asarray(i, np.float32) for i in images]) / 127.5 - 1
        return {"pixel_values": torch.from_numpy(arr).permute(0, 3, 1, 2)}

    model = PixelModel()
    model.dtype = torch.float32
    # Pixels pass no nonlinearity: their units are "residual" (hidden state 0 itself).
    return VisionMaps(SimpleNamespace(model=model, processor=processor, device=torch.device("cpu")), [0], name,
                      kind="residual")


def test_your_own_generator_loads_from_its_class(tmp_path):
    from safetensors.torch import save_file

    g = PaintGenerator()
    folder = tmp_path / "own"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in g.state_dict().items()}, folder / gan.WEIGHTS_FILE)
    (folder / gan.SPEC_FILE).write_text('{"kind": "generator", "class": "test_generator:PaintGenerator", '
                                        '"kwargs": {"side": 16}, "unit_layers": ["paint"]}')
    loaded, spec = gan.load_generator(folder)
    z = gan.sample_latents(2, 6, 0)
    assert torch.equal(loaded(z), g(z)) and generator_layers(loaded, spec["unit_layers"]) == ["paint"]
    (folder / gan.SPEC_FILE).write_text('{"kind": "generator", "class": "nowhere:Nothing"}')
    with pytest.raises(gan.GeneratorError, match="cannot import the generator class 'nowhere:Nothing'"):
        gan.load_generator(folder)


def test_matching_finds_the_units_that_draw_the_image_and_the_nulls_do_not():
    from convergence.generator.matching import match_generator, rotated_units, unit_matrices

    g, random_g = PaintGenerator(), PaintGenerator()
    torch.manual_seed(1)
    random_g.fc.reset_parameters()
    vision = _pixel_vision()
    arrays = match_generator(g, random_g, ["paint"], vision, n_samples=40, seed=0, grid=4, res=8, k=3,
                             rotation_seed=0, batch_size=16, progress=False)
    # Generator unit c draws the image's channel c: each is the other's best partner, r ~ 1 (uint8 rounding).
    assert arrays["obs_a_index"][:, 0].tolist() == [0, 1, 2] and arrays["obs_b_index"][:, 0].tolist() == [0, 1, 2]
    assert arrays["obs_a_r"][:, 0].min() > 0.99
    # Independent check of the stored r: numpy's corrcoef on the same unit matrices.
    mats = unit_matrices(g, ["paint"], vision, gan.sample_latents(40, 6, 0), grid=4, res=8, progress=False)
    full = np.corrcoef(mats.a.T, mats.b.T)[:3, 3:]
    np.testing.assert_allclose(arrays["obs_a_r"][:, 0], full[np.arange(3), arrays["obs_a_index"][:, 0]], atol=1e-5)
    # The rotation mixes the generator's channels: no unit draws one channel any more.
    assert arrays["rot_a_r"][:, 0].max() < 0.99
    z = rotated_units(mats.a, [3], seed=0)
    np.testing.assert_allclose(np.linalg.eigvalsh(np.cov(z.T, ddof=0)), np.linalg.eigvalsh(np.corrcoef(mats.a.T)),
                               atol=1e-5)  # an orthogonal mix of z-scored units: the same covariance spectrum
    assert not np.allclose(z, (mats.a - mats.a.mean(0)) / mats.a.std(0), atol=1e-3)  # but not the identity
    assert mats.mean_a.shape == (3,) and mats.widths_a == [3] and mats.widths_b == [3]


def _pair(r: np.ndarray, widths_a, widths_b):
    from convergence.generator.stage import Pair
    from convergence.rosetta import topk_partners

    p = topk_partners(r, 2)
    return Pair({"observed": p, "rotation": p, "random_generator": p}, np.zeros(r.shape[0]), np.zeros(r.shape[1]),
                widths_a, widths_b, {"generator_layers": ["a", "b"], "model_layers": [0], "init": "pretrained"})


def test_sets_take_the_generator_as_anchor_across_models():
    from convergence.generator.stage import generator_sets, match_counts, sets_frame

    # Generator units 0..3 (layers a: 2, b: 2); model X units 0..3, model Y units 0..2.
    rx = np.array([[0.9, 0.1, 0.0, 0.0], [0.1, 0.2, 0.8, 0.0], [0.0, 0.7, 0.1, 0.0], [0.2, 0.1, 0.3, 0.25]])
    ry = np.array([[0.1, 0.85, 0.0], [0.6, 0.1, 0.1], [0.1, 0.0, 0.2], [0.0, 0.3, 0.4]])
    pairs = {"X": _pair(rx, [2, 2], [4]), "Y": _pair(ry, [2, 2], [3])}
    # Strict best buddies: X: 0-0, 1-2, 2-1; Y: 0-1, 1-0, 3-2. Units 0 and 1 are matched in both models.
    strict = sets_frame(generator_sets(pairs, ["X", "Y"], "G", k_back=1), pairs, ["X", "Y"], "G")
    assert sorted(strict["generator_unit"].tolist()) == [0, 1]
    row = strict.set_index("generator_unit").loc[1]
    assert (row["X_unit"], row["Y_unit"], row["generator_label"], row["X_label"]) == (2, 0, "a:1", "h0:2")
    # The reference: a unit's best partner must rank it in its top 2. Adds X: 3-2 (X2 ranks G1, G3);
    # Y: 2-2 (Y2 ranks G3, G2). Unit 3's second-best partner X3 (whose best it is) never counts.
    reference = sets_frame(generator_sets(pairs, ["X", "Y"], "G", k_back=2), pairs, ["X", "Y"], "G")
    assert sorted(reference["generator_unit"].tolist()) == [0, 1, 2, 3]
    assert reference.set_index("generator_unit").loc[3, "X_unit"] == 2
    counts = match_counts(pairs, {"X": None, "Y": None}, k_back=2).set_index(["model", "criterion"])["matches"]
    assert (counts[("X", "strict")], counts[("Y", "strict")]) == (3, 3)
    assert (counts[("X", "reference")], counts[("Y", "reference")]) == (4, 4)


def test_term_maps_subtract_each_units_mean_and_batch_elements_do_not_interact():
    g = gan.build_generator({"latent_dim": 6, "width": 4, "image_size": 16}, seed=0)
    layers = list(g.unit_layers)
    assert layers == ["stem", "up1"]
    maps = [torch.randn(2, 8, 4, 4), torch.randn(2, 4, 16, 16)]
    terms = Terms(layers=layers, layer=np.array([1, 0]), channel=np.array([3, 5]), mean=np.array([0.5, -2.0]))
    out = term_maps(maps, terms, res=8)
    down = torch.nn.functional.interpolate(maps[1], size=(8, 8), mode="bilinear", align_corners=False)
    up = torch.nn.functional.interpolate(maps[0], size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(out[:, 0], down[:, 3] - 0.5) and torch.allclose(out[:, 1], up[:, 5] + 2.0)
    # Two latents optimised together end where each ends alone (eval-mode BatchNorm: no coupling).
    target = torch.randn(2, 2, 8, 8)
    z0 = gan.sample_latents(2, 6, seed=3)
    both = optimize_latents(g, terms, target, torch.ones(2, 2), z0, steps=6, lr=0.1, res=8, progress=False)
    alone = optimize_latents(g, terms, target[1:], torch.ones(1, 2), z0[1:], steps=6, lr=0.1, res=8, progress=False)
    assert torch.allclose(both.z[1], alone.z[0], atol=1e-5)
