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
    lm = load_model({"source": f"local:{tiny_models[arch]}"})
    assert ds.sizes["layer"] == lm.n_hidden_states and ds["layer"].values.tolist() == list(range(lm.n_hidden_states))
    for key in ("model", "source", "init", "pooling", "n_params", "modality", "dtype", "params_sha256",
                "packages", "dataset_sha256"):
        assert key in ds.attrs
    assert ds.attrs["n_params"] == lm.n_params and ds.attrs["dataset_sha256"] == meta["content_sha256"]
    assert ds.attrs["packages"]["torch"].startswith("2.13.0")
    # Batched, length-sorted, padded extraction equals one sample at a time without padding.
    acts = ds["activations"].values
    for i in [0, 5, 17, 39]:
        enc = lm.processor([df["text"][i]], return_tensors="pt")
        with torch.inference_mode():
            out = lm.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True)
        want = torch.stack(out.hidden_states, 1)[0].mean(1).numpy()
        np.testing.assert_allclose(acts[i], want, rtol=1e-4, atol=1e-5)
    if lm.kind == "causal_lm":
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
    lm = load_model(spec)
    assert lm.kind == "vision" and ds.attrs["modality"] == "vision"
    assert ds.sizes["layer"] == lm.n_hidden_states == 3
    df, _ = read_samples(scenes_small[0])
    assert ds["sample_id"].values.tolist() == df["sample_id"].tolist()
    for i in [0, 13, 39]:
        pixels = lm.processor(images=[Image.open(df["image"][i]).convert("RGB")], return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            hs = lm.model(pixel_values=pixels, output_hidden_states=True).hidden_states
        if arch == "resnet":
            want = torch.stack([h[0].mean((1, 2)) for h in hs])
        elif pooling == "cls":
            want = torch.stack([h[0, 0] for h in hs])
        else:
            want = torch.stack([h[0, 1:].mean(0) for h in hs])
        np.testing.assert_allclose(ds["activations"].values[i], want.numpy(), rtol=1e-4, atol=1e-5)
