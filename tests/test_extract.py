import math

import numpy as np
import pytest
import torch
import xarray as xr

from convergence import extract as ex
from convergence.datasets import read_samples, sample_dataset
from convergence.models import ModelLoadError, load_model
from convergence.store import StoreError, check_same_samples, open_activations


def test_pooling_against_a_hand_computation():
    # Two layers, batch of 2, 3 positions, width 2; sample 2 has one padding position.
    h0 = torch.tensor([[[1., 2.], [3., 4.], [5., 6.]], [[1., 1.], [3., 3.], [100., 100.]]])
    h1 = h0 * 10
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    mean = ex.pool_hidden_states((h0, h1), mask, "mean", [0, 1])
    assert mean.shape == (2, 2, 2)
    assert torch.allclose(mean[0, 0], torch.tensor([3., 4.]))  # (1+3+5)/3, (2+4+6)/3
    assert torch.allclose(mean[1, 0], torch.tensor([2., 2.]))  # padding (100) ignored: (1+3)/2
    assert torch.allclose(mean[1, 1], torch.tensor([20., 20.]))
    last = ex.pool_hidden_states((h0, h1), mask, "last", [1])
    assert torch.allclose(last[:, 0], torch.tensor([[50., 60.], [30., 30.]]))
    cls = ex.pool_hidden_states((h0, h1), mask, "cls", [0])
    assert torch.allclose(cls[:, 0], torch.tensor([[1., 2.], [1., 1.]]))


def test_causal_lm_nats_against_a_hand_computation():
    # Vocabulary of 2, uniform logits except a confident last step: nll = ln 2 per uniform step.
    logits = torch.zeros(1, 3, 2)
    logits[0, 1] = torch.tensor([0., math.log(3.)])  # p(token 1) = 3/4
    ids = torch.tensor([[0, 1, 1]])
    nats, n = ex.causal_lm_nats(logits, ids, torch.tensor([[1, 1, 1]]))
    assert n.item() == 2
    assert nats.item() == pytest.approx(math.log(2) + math.log(4 / 3))
    nats, n = ex.causal_lm_nats(logits, ids, torch.tensor([[1, 1, 0]]))  # last target is padding
    assert n.item() == 1 and nats.item() == pytest.approx(math.log(2))


def _extract(tiny_models, scenes_small, arch, out, **spec):
    spec = {"source": f"local:{tiny_models[arch]}", "batch_size": 7, **spec}
    return ex.extract_to_zarr(scenes_small[0], spec, out, model_name=arch, dataset_name="scenes",
                              chunk_size=16, progress=False)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "bert", "mpnet"])
def test_store_layout_and_values_equal_unbatched_forward(tiny_models, scenes_small, tmp_path, arch):
    path = _extract(tiny_models, scenes_small, arch, tmp_path / f"{arch}.zarr")
    ds = xr.open_zarr(path)
    df, meta = read_samples(scenes_small[0])
    assert ds["activations"].dims == ("sample", "layer", "neuron")
    assert ds["activations"].dtype == np.float32
    assert ds["sample_id"].values.tolist() == df["sample_id"].tolist()
    lm = _independent(tiny_models[arch])  # transformers' own classes, not our loader
    n_states = lm.model.config.num_hidden_layers + 1
    assert ds.sizes["layer"] == n_states and ds["layer"].values.tolist() == list(range(n_states))
    for key in ("model", "source", "init", "pooling", "n_params", "modality", "dtype", "params_sha256",
                "packages", "dataset_sha256"):
        assert key in ds.attrs
    assert ds.attrs["n_params"] == lm.n_params and ds.attrs["dataset_sha256"] == meta["content_sha256"]
    assert ds.attrs["layers"] == "all"  # language models keep the embedding output (PRH)
    assert ds.attrs["packages"]["torch"].startswith("2.13.0")
    # Batched, length-sorted, padded extraction equals one sample at a time without padding.
    acts = ds["activations"].values
    for i in [0, 5, 17, 39]:
        enc = lm.processor([df["text"][i]], return_tensors="pt")
        with torch.inference_mode():
            out = lm.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True)
        want = torch.stack(out.hidden_states, 1)[0].mean(1).numpy()
        np.testing.assert_allclose(acts[i], want, rtol=1e-4, atol=1e-5)
    if ds.attrs["kind"] == "causal_lm":
        assert np.isfinite(ds["loss"].values).all() and np.isfinite(ds["bpb"].values).all()
        enc = lm.processor([df["text"][3]], return_tensors="pt")
        with torch.inference_mode():
            loss = lm.model(**{k: enc[k] for k in ("input_ids", "attention_mask")}, labels=enc["input_ids"]).loss
        assert ds["loss"].values[3] == pytest.approx(loss.item(), rel=1e-4)
        nbytes = len(df["text"][3].encode())
        assert ds["bpb"].values[3] == pytest.approx(loss.item() * ds["n_tokens"].values[3] / math.log(2) / nbytes,
                                                    rel=1e-4)
    else:
        assert "loss" not in ds and "bpb" not in ds
    check_same_samples(ds, open_activations(path))


class _Independent:
    def __init__(self, model, processor):
        self.model, self.processor = model, processor
        self.n_params = sum(p.numel() for p in model.parameters())


def _independent(folder, vision: bool = False):
    """The saved model read by transformers itself (Auto classes, no code of ours): the forward that
    extraction is checked against."""
    import transformers as t

    if vision:
        config = t.AutoConfig.from_pretrained(folder)
        cls = t.CLIPVisionModel if config.model_type == "clip" else t.AutoModel
        return _Independent(cls.from_pretrained(folder).eval(), t.AutoImageProcessor.from_pretrained(folder))
    config = t.AutoConfig.from_pretrained(folder)
    causal = any(a.endswith("ForCausalLM") for a in config.architectures or [])
    cls = t.AutoModelForCausalLM if causal else t.AutoModel
    tok = t.AutoTokenizer.from_pretrained(folder)
    return _Independent(cls.from_pretrained(folder).eval(), tok)


def test_layer_subset_pooling_and_float16(tiny_models, scenes_small, tmp_path):
    full = xr.open_zarr(_extract(tiny_models, scenes_small, "bert", tmp_path / "full.zarr", pooling="cls"))
    sub = xr.open_zarr(_extract(tiny_models, scenes_small, "bert", tmp_path / "sub.zarr", pooling="cls",
                                layers=[-1, 0], store_dtype="float16"))
    assert sub["layer"].values.tolist() == [2, 0]
    assert sub["activations"].dtype == np.float16
    np.testing.assert_allclose(sub["activations"].values[:, 0], full["activations"].values[:, 2], rtol=1e-2, atol=1e-2)


def test_killed_extraction_leaves_no_store(tiny_models, scenes_small, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = ex._write_window

    def dies_on_second_window(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(ex, "_write_window", dies_on_second_window)
    with pytest.raises(KeyboardInterrupt):
        _extract(tiny_models, scenes_small, "llama", tmp_path / "m.zarr")
    assert list(tmp_path.iterdir()) == []  # neither the store nor its temp sibling


def test_bad_inputs_fail_before_heavy_work(tiny_models, scenes_small, tmp_path):
    with pytest.raises(ValueError, match="models.llama.layers: layer 9 out of range"):
        _extract(tiny_models, scenes_small, "llama", tmp_path / "a.zarr", layers=[9])
    with pytest.raises(ModelLoadError, match="no usable image processor"):
        _extract(tiny_models, scenes_small, "llama", tmp_path / "b.zarr", modality="vision")
    text_only = sample_dataset("t", {"sampler": "text_file", "file": str(_lines(tmp_path)), "n": 3}, tmp_path / "t")
    with pytest.raises(ex.ExtractionError, match="vision model .vit. needs one image per sample"):
        ex.extract_to_zarr(text_only, {"source": f"local:{tiny_models['vit']}", "modality": "vision"},
                           tmp_path / "c.zarr", model_name="vit", progress=False)
    assert not (tmp_path / "a.zarr").exists()


def _lines(tmp_path):
    f = tmp_path / "lines.txt"
    f.write_text("one\ntwo\nthree\n")
    return f


def test_store_checks(tiny_models, scenes_small, tmp_path):
    path = _extract(tiny_models, scenes_small, "bert", tmp_path / "bert.zarr")
    with pytest.raises(StoreError, match="does not exist"):
        open_activations(tmp_path / "missing.zarr")
    (tmp_path / "junk.zarr").mkdir()
    with pytest.raises(StoreError, match="delete .*junk.zarr and rerun"):
        open_activations(tmp_path / "junk.zarr")
    other = sample_dataset("other", {"sampler": "scenes", "n": 40, "seed": 4, "image_size": 32}, tmp_path / "o")
    p2 = ex.extract_to_zarr(other, {"source": f"local:{tiny_models['bert']}"}, tmp_path / "b2.zarr",
                            model_name="bert", progress=False)
    with pytest.raises(StoreError, match="different samples"):
        check_same_samples(open_activations(path), open_activations(p2))


@pytest.mark.parametrize("arch,pooling", [("vit", "cls"), ("dinov2", "mean"), ("clip", "cls"), ("resnet", "mean")])
def test_vision_extraction_equals_a_direct_forward(tiny_models, scenes_small, tmp_path, arch, pooling):
    from PIL import Image

    spec = {"source": f"local:{tiny_models[arch]}", "modality": "vision", "pooling": pooling, "batch_size": 6}
    ds = xr.open_zarr(ex.extract_to_zarr(scenes_small[0], spec, tmp_path / f"{arch}.zarr", model_name=arch,
                                         chunk_size=16, progress=False))
    lm = _independent(tiny_models[arch], vision=True)
    assert ds.attrs["kind"] == "vision" and ds.attrs["modality"] == "vision"
    assert ds.attrs["layers"] == "blocks" and ds["layer"].values.tolist() == [1, 2]  # PRH: no stem/embedding
    df, _ = read_samples(scenes_small[0])
    assert ds["sample_id"].values.tolist() == df["sample_id"].tolist()
    for i in [0, 13, 39]:
        pixels = lm.processor(images=[Image.open(df["image"][i]).convert("RGB")], return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            hs = lm.model(pixel_values=pixels, output_hidden_states=True).hidden_states
        hs = hs[1:]
        if arch == "resnet":
            want = torch.stack([h[0].mean((1, 2)) for h in hs])
        elif pooling == "cls":
            want = torch.stack([h[0, 0] for h in hs])
        else:
            want = torch.stack([h[0, 1:].mean(0) for h in hs])
        np.testing.assert_allclose(ds["activations"].values[i], want.numpy(), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- EfficientNet, mixed widths, baselines


@pytest.fixture(scope="module")
def photos_small(tmp_path_factory):
    """An image_captions dataset of 6 real-looking photos at 240 px (crops of sklearn's two photos)."""
    sk = pytest.importorskip("sklearn.datasets")
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    folder = root / "stamps"
    folder.mkdir()
    words = ["a palace roof", "a yellow flower", "an old temple", "a flower and a bee", "a red roof", "petals"]
    for i, (name, box) in enumerate([("china.jpg", (0, 0, 400, 400)), ("flower.jpg", (100, 0, 500, 400)),
                                     ("china.jpg", (200, 20, 600, 420)), ("flower.jpg", (0, 0, 420, 420)),
                                     ("china.jpg", (100, 10, 400, 310)), ("flower.jpg", (240, 27, 640, 427))]):
        Image.fromarray(sk.load_sample_image(name)).crop(box).save(folder / f"p{i}.png")
        (folder / f"p{i}.txt").write_text(words[i].capitalize() + ".\n")
    spec = {"sampler": "image_captions", "folder": str(folder), "n": 6, "image_size": 240}
    return sample_dataset("photos", spec, root / "photos")


def test_efficientnet_extraction_pads_stages_and_equals_the_reference(photos_small, tmp_path):
    """A random-init EfficientNet-Lite0 folder (no weight package needed) through extraction: stages of
    different widths zero-padded with `width` recorded; values equal the reference implementation's
    stage outputs (forward hooks) averaged over space."""
    import contextlib
    import io

    from PIL import Image

    from convergence.store import layer_widths
    from convergence.vision import efficientnet as E

    Reference = pytest.importorskip("efficientnet_lite_pytorch").EfficientNet
    model = E.EfficientNetLite(E.EfficientNetLiteConfig("efficientnet-lite0"))
    model.reset_parameters_tf(3)
    E.save_folder(model, tmp_path / "lite0")
    spec = {"source": f"local:{tmp_path / 'lite0'}", "modality": "vision", "pooling": "mean", "batch_size": 4}
    ds = xr.open_zarr(ex.extract_to_zarr(photos_small, spec, tmp_path / "l0.zarr", model_name="l0", chunk_size=4,
                                         progress=False))
    assert ds["layer"].values.tolist() == list(range(1, 8))
    assert ds["layer_name"].values.tolist() == [f"stage{i}" for i in range(1, 8)]
    widths = layer_widths(ds).tolist()
    assert widths == [16, 24, 40, 80, 112, 192, 320] and ds.sizes["neuron"] == 320
    acts = ds["activations"].values
    for k, w in enumerate(widths):
        assert (acts[:, k, w:] == 0).all() and (acts[:, k, :w] != 0).any()

    ref = Reference.from_name("efficientnet-lite0")
    ref.load_state_dict(model.state_dict())
    ref.eval()
    outs = []
    for i in model.stage_ends:
        ref._blocks[i].register_forward_hook(lambda mod, inp, out: outs.append(out.mean((2, 3))))
    df, _ = read_samples(photos_small)
    pixels = E.EfficientNetLiteProcessor(224)([Image.open(p) for p in df["image"]])["pixel_values"]
    with torch.inference_mode(), contextlib.redirect_stdout(io.StringIO()):
        ref(pixels)
    for k, w in enumerate(widths):
        np.testing.assert_allclose(acts[:, k, :w], outs[k].numpy(), rtol=1e-4, atol=1e-5)


def test_images_too_small_for_the_model_are_refused(scenes_small, tmp_path):
    from convergence.vision import efficientnet as E

    E.save_folder(E.EfficientNetLite(E.EfficientNetLiteConfig("efficientnet-lite0")), tmp_path / "lite0")
    spec = {"source": f"local:{tmp_path / 'lite0'}", "modality": "vision"}
    with pytest.raises(ex.ExtractionError, match=r"runs at 224x224 px but every image .* smaller \(e.g. 32x32\)"):
        ex.extract_to_zarr(scenes_small[0], spec, tmp_path / "x.zarr", model_name="lite0", progress=False)
    assert not (tmp_path / "x.zarr").exists()


def test_pixel_baseline_by_hand(photos_small, tmp_path):
    from PIL import Image

    spec = {"source": "baseline:pixels", "modality": "vision", "baseline": {"scales": [1, 2, 8]}}
    ds = xr.open_zarr(ex.extract_to_zarr(photos_small, spec, tmp_path / "px.zarr", model_name="px", chunk_size=4,
                                         progress=False))
    df, _ = read_samples(photos_small)
    assert ds.attrs["init"] == "baseline" and ds.attrs["kind"] == "baseline" and ds.attrs["n_params"] == 0
    assert ds["layer_name"].values.tolist() == ["1px", "2px", "8px"] and ds["width"].values.tolist() == [3, 12, 192]
    acts = ds["activations"].values
    img = np.asarray(Image.open(df["image"][4]).convert("RGB"), dtype=np.float64)  # 240 x 240
    mean = img.mean((0, 1)) / 127.5 - 1  # 1 px = the image's mean colour, in [-1, 1]
    np.testing.assert_allclose(acts[4, 0, :3], mean, atol=1e-4)
    quadrant = img[120:, :120].mean((0, 1)) / 127.5 - 1  # 2 px: bottom-left cell = index (1, 0)
    np.testing.assert_allclose(acts[4, 1, 6:9], quadrant, atol=1e-4)
    again = xr.open_zarr(ex.extract_to_zarr(photos_small, spec, tmp_path / "px2.zarr", model_name="px",
                                            chunk_size=4, progress=False))
    assert np.array_equal(again["activations"].values, acts)  # deterministic


def test_bag_of_words_baseline_by_hand(photos_small, tmp_path):
    spec = {"source": "baseline:bag_of_words", "modality": "language"}
    ds = xr.open_zarr(ex.extract_to_zarr(photos_small, spec, tmp_path / "bow.zarr", model_name="bow",
                                         chunk_size=4, progress=False))
    # vocabulary (two or more letters, sorted): an and bee flower old palace petals red roof temple yellow
    vocab = ["an", "and", "bee", "flower", "old", "palace", "petals", "red", "roof", "temple", "yellow"]
    assert ds.sizes["neuron"] == len(vocab) and ds["layer_name"].values.tolist() == ["counts", "tfidf"]
    counts = ds["activations"].values[:, 0]
    row = dict(zip(vocab, counts[3]))  # "A flower and a bee."
    assert row == {w: (1.0 if w in ("flower", "and", "bee") else 0.0) for w in vocab}
    tfidf = ds["activations"].values[:, 1]
    # smooth idf = ln((1 + n) / (1 + df)) + 1 with n = 6; "flower" is in 2 captions, "bee" in 1
    idf = {w: np.log(7 / (1 + d)) + 1 for w, d in (("flower", 2), ("and", 1), ("bee", 1))}
    norm = np.sqrt(sum(v * v for v in idf.values()))
    assert tfidf[3, vocab.index("flower")] == pytest.approx(idf["flower"] / norm, rel=1e-6)
    assert tfidf[3, vocab.index("bee")] == pytest.approx(idf["bee"] / norm, rel=1e-6)
