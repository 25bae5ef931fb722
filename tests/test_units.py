"""Units stores (un-pooled activations for Rosetta): word positions for text, grid cells for images."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr

from convergence.datasets import read_samples, write_samples
from convergence.models import load_model
from convergence.rosetta.units import (
    UnitsError,
    extract_units,
    open_units,
    spatial_units,
    split_words,
    word_token_weights,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


LANGUAGE = ["llama", "gemma3", "bert", "mpnet"]


def _units(tiny_models, samples, arch, out, **kw):
    spec = {"source": f"local:{tiny_models[arch]}", "batch_size": 7}
    if arch in ("vit", "dinov2", "clip", "resnet"):
        spec["modality"] = "vision"
    spec["units"] = "residual"  # hidden states, compared with the model's own output below
    spec.update(kw.pop("spec", {}))
    return extract_units(samples, spec, out, model_name=arch, dataset_name="d", progress=False,
                         store_dtype="float32", **kw)


def hand_word_activations(lm, text: str) -> np.ndarray:
    """`[n_words, L, D]` by another route than the package: the tokenizer's own word_ids (pre-tokens).

    Each of our words is the union of the pre-tokens inside its span; its activation is the mean of the
    hidden states of the tokens of those pre-tokens. Asserts the precondition that every pre-token lies
    inside one word (true for the texts used here), so the two routes must agree.
    """
    tok = lm.processor
    enc = tok(text, return_tensors="pt")
    with torch.inference_mode():
        hidden = lm.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                          output_hidden_states=True).hidden_states
    stacked = torch.stack(hidden, 0)[:, 0].float()  # [L, T, D]
    pre = tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)
    words = [(m.group(), m.start(), m.end()) for m in re.finditer(r"\w+(?:[-']\w+)*|[^\w\s]", text)]
    owner = {}
    for p, (_, (s, e)) in enumerate(pre):
        inside = [w for w, (_, ws, we) in enumerate(words) if ws <= s and e <= we]
        assert len(inside) == 1, f"pre-token {pre[p]} is not inside exactly one word of {text!r}"
        owner[p] = inside[0]
    word_ids = enc.word_ids()
    out = []
    for w in range(len(words)):
        tokens = [t for t, p in enumerate(word_ids) if p is not None and owner[p] == w]
        assert tokens, f"word {words[w]} has no token"
        out.append(stacked[:, tokens].mean(1))
    return torch.stack(out).numpy(), words, word_ids


# ---------------------------------------------------------------- the word rule


def test_word_rule():
    text = "It's a top-left (jet-black) square, 3.5 wide; naïve café!"
    assert [w for w, _, _ in split_words(text)] == [
        "It's", "a", "top-left", "(", "jet-black", ")", "square", ",", "3", ".", "5", "wide", ";", "naïve",
        "café", "!"]
    for word, start, end in split_words(text):
        assert text[start:end] == word
    assert split_words("  ") == []


def test_word_token_weights_average_overlapping_tokens_and_skip_specials():
    words = split_words("ab cd.,")  # ab, cd, ".", ","
    # tokens: [CLS], "a", "b", " cd" (leading space in its span), ".," (spans two words), [SEP], padding
    offsets = [(0, 0), (0, 1), (1, 2), (2, 5), (5, 7), (0, 0), (0, 0)]
    special = [1, 0, 0, 0, 0, 1, 1]
    w = word_token_weights(words, offsets, special, "s1")
    expected = np.zeros((4, 7))
    expected[0, [1, 2]] = 0.5
    expected[1, 3] = 1.0
    expected[2, 4] = expected[3, 4] = 1.0
    np.testing.assert_array_equal(w, expected)
    with pytest.raises(UnitsError, match="sample 's9': word 3"):
        word_token_weights(words, offsets[:4] + [(5, 6), (0, 0), (0, 0)], special, "s9")  # "," lost


# ---------------------------------------------------------------- language stores


@pytest.fixture(scope="module")
def language_units(tiny_models, scenes_small, tmp_path_factory):
    root = tmp_path_factory.mktemp("lang_units")
    return {arch: _units(tiny_models, scenes_small[0], arch, root / f"{arch}.zarr", chunk_rows=100)
            for arch in LANGUAGE}


def test_language_positions_are_the_words_for_every_tokenizer(language_units, scenes_small):
    df, meta = read_samples(scenes_small[0])
    words = [split_words(t) for t in df["text"]]
    want_ids = [sid for sid, ws in zip(df["sample_id"], words) for _ in ws]
    want_pos = [i for ws in words for i in range(len(ws))]
    want_words = [w for ws in words for w, _, _ in ws]
    stores = {arch: open_units(path) for arch, path in language_units.items()}
    for arch, ds in stores.items():
        assert ds["activations"].dims == ("position", "layer", "neuron")
        assert ds["sample_id"].values.astype(object).tolist() == want_ids
        assert ds["unit_pos"].values.tolist() == want_pos
        assert ds["word"].values.astype(object).tolist() == want_words
        assert ds["char_start"].values.tolist() == [s for ws in words for _, s, _ in ws]
        assert ds.attrs["positions"] == "word" and ds.attrs["n_positions"] == len(want_ids)
        assert ds.attrs["dataset_sha256"] == meta["content_sha256"] and ds.attrs["model"] == arch
        for key in ("source", "init", "modality", "kind", "n_params", "params_sha256", "layers", "word_pattern"):
            assert key in ds.attrs
        assert ds["activations"].encoding["chunks"][0] == 100  # streamed in chunks of positions
    assert len({ds.sizes["position"] for ds in stores.values()}) == 1


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_word_activation_is_the_mean_of_its_tokens(language_units, tiny_models, scenes_small, arch):
    df, _ = read_samples(scenes_small[0])
    ds = xr.open_zarr(language_units[arch])
    lm = load_model({"source": f"local:{tiny_models[arch]}"})
    ids = ds["sample_id"].values.astype(object)
    for i in [0, 7, 39]:
        want, _, _ = hand_word_activations(lm, df["text"][i])
        got = ds["activations"].values[ids == df["sample_id"][i]]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


SUBWORD_TEXTS = [
    "The well-known crimson rhombus sits at the top-left corner.",
    "It's a tiny emerald triangle; nothing else is there.",
    "Three huge tangerine circles on a snowy background.",
    "Unbelievably, the gigantic violet squares overlap.",
]


@pytest.fixture(scope="module")
def subword_model(tmp_path_factory):
    """A tiny BERT with a BPE tokenizer trained here on a few sentences: most words split into pieces."""
    import transformers as t
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SUBWORD_TEXTS * 3, trainers.BpeTrainer(vocab_size=70, special_tokens=specials,
                                                                   show_progress=False))
    vocab = tok.get_vocab()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    fast = t.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                     sep_token="[SEP]", mask_token="[MASK]")
    folder = tmp_path_factory.mktemp("subword") / "bert-bpe"
    torch.manual_seed(0)
    model = t.BertModel(t.BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128,
                                     architectures=["BertModel"]))
    model.save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)
    samples = write_samples(iter([{"sample_id": f"t{i}", "text": x} for i, x in enumerate(SUBWORD_TEXTS)]),
                            folder.parent / "texts", {"dataset": "texts"})
    return folder, samples


def test_subword_tokens_are_averaged_into_words(subword_model, tmp_path):
    folder, samples = subword_model
    spec = {"source": f"local:{folder}", "batch_size": 3, "units": "residual"}
    ds = xr.open_zarr(extract_units(samples, spec, tmp_path / "u.zarr", model_name="bpe", progress=False,
                                    store_dtype="float32", layers=[0, 2]))
    lm = load_model(spec)
    ids = ds["sample_id"].values.astype(object)
    n_pieces = []
    for i, text in enumerate(SUBWORD_TEXTS):
        want, words, word_ids = hand_word_activations(lm, text)
        got = ds["activations"].values[ids == f"t{i}"]
        assert got.shape == (len(words), 2, 32)
        np.testing.assert_allclose(got, want[:, [0, 2]], rtol=1e-4, atol=1e-5)
        pieces = lm.processor(text, return_offsets_mapping=True)["offset_mapping"]
        n_pieces += [sum(1 for s, e in pieces if e > s and s < we and ws < e) for _, ws, we in words]
    # The test is only meaningful if words really split: many words have several tokens.
    assert sum(n > 1 for n in n_pieces) >= 10 and max(n_pieces) >= 4
    assert "top-left" in ds["word"].values.astype(object).tolist()


def test_truncated_words_raise_naming_the_sample(tiny_models, scenes_small, tmp_path):
    df, _ = read_samples(scenes_small[0])
    with pytest.raises(UnitsError, match=f"sample '{df['sample_id'][0]}' has .* tokens, more than max_length=4"):
        _units(tiny_models, scenes_small[0], "bert", tmp_path / "t.zarr", spec={"max_length": 4})
    assert list(tmp_path.iterdir()) == []  # neither the store nor its temp sibling


def test_defaults_float16_mlp_units_and_layers_from_spec(tiny_models, scenes_small, tmp_path):
    spec = {"source": f"local:{tiny_models['bert']}", "units_layers": [-1]}
    ds = open_units(extract_units(scenes_small[0], spec, tmp_path / "u.zarr", model_name="bert", progress=False))
    assert ds["activations"].dtype == np.float16 and ds["layer"].values.tolist() == [2]
    assert ds.attrs["units"] == "mlp" and ds.sizes["neuron"] == 64  # a language model's default: MLP neurons


# ---------------------------------------------------------------- vision stores


@pytest.mark.parametrize("arch,grid", [("vit", 3), ("dinov2", 4), ("clip", 2), ("resnet", 3)])
def test_vision_units_are_resized_patch_maps(tiny_models, scenes_small, tmp_path, arch, grid):
    from PIL import Image

    path = _units(tiny_models, scenes_small[0], arch, tmp_path / f"{arch}.zarr", grid=grid, chunk_rows=64)
    ds = open_units(path)
    df, _ = read_samples(scenes_small[0])
    assert ds.attrs["positions"] == "cell" and ds.attrs["grid"] == grid
    assert ds.sizes["position"] == len(df) * grid * grid
    assert ds["unit_pos"].values.tolist() == list(range(grid * grid)) * len(df)
    assert ds["sample_id"].values.astype(object).tolist() == [s for s in df["sample_id"] for _ in range(grid * grid)]
    lm = load_model({"source": f"local:{tiny_models[arch]}", "modality": "vision"})
    acts = ds["activations"].values
    for i in [0, 21]:
        pixels = lm.processor(images=[Image.open(df["image"][i]).convert("RGB")], return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            hs = lm.model(pixel_values=pixels, output_hidden_states=True).hidden_states
        for layer, h in enumerate(hs):
            if h.ndim == 3:  # 32x32 image, 8x8 patches: CLS + 4x4 patch tokens
                assert h.shape[1] == 17
                fmap = h[0, 1:].reshape(4, 4, -1).permute(2, 0, 1)[None]
            else:
                fmap = h
            want = F.interpolate(fmap, size=(grid, grid), mode="bilinear", align_corners=False)[0]
            want = want.permute(1, 2, 0).reshape(grid * grid, -1)  # cell = row * grid + col
            got = acts[i * grid * grid:(i + 1) * grid * grid, layer]
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)


def test_spatial_units_drop_prefix_tokens_and_need_one_width():
    b, d = 2, 5
    grid_tokens = torch.arange(b * 9 * d, dtype=torch.float32).reshape(b, 9, d)
    with_registers = torch.cat([torch.full((b, 3, d), 1e6), grid_tokens], 1)  # CLS + 2 registers first
    out = spatial_units([with_registers], [0], grid=3, patch_grid=(3, 3))
    assert out.shape == (b, 9, 1, d)
    np.testing.assert_array_equal(out[:, :, 0].numpy(), grid_tokens.numpy())  # identity resize, order kept
    cnn = torch.randn(b, 5, 6, 6)
    # 6 -> 2, bilinear with align_corners=False: output cells sample input pixels 1 and 4 exactly.
    np.testing.assert_allclose(spatial_units([cnn], [0], grid=2)[:, :, 0].numpy(),
                               cnn[:, :, 1::3, 1::3].flatten(2).transpose(1, 2).numpy(), atol=1e-6)
    with pytest.raises(UnitsError, match=r"differ in width \(0: 5, 1: 8\).*units_layers"):
        spatial_units([cnn, torch.randn(b, 8, 3, 3)], [0, 1], grid=2)


# ---------------------------------------------------------------- MLP units


def _mlp_by_other_hooks(lm, text: str, block: int) -> torch.Tensor:
    """Post-activation MLP units of one block by another route: hooks on the MLP's own sub-layers.

    Llama/Gemma: act_fn(gate_proj out) * up_proj out; BERT/MPNet: intermediate_act_fn(intermediate.dense out).
    Returns `[T, D_mlp]` for the tokens of `text`.
    """
    net = lm.model.base_model
    blocks = net.layers if hasattr(net, "layers") else net.encoder.layer
    seen = {}
    if hasattr(blocks[block], "mlp"):
        mlp = blocks[block].mlp
        hooks = [mlp.gate_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("gate", o)),
                 mlp.up_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("up", o))]
    else:
        inter = blocks[block].intermediate
        hooks = [inter.dense.register_forward_hook(lambda m, i, o: seen.__setitem__("dense", o))]
    enc = lm.processor(text, return_tensors="pt")
    try:
        with torch.inference_mode():
            net(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    finally:
        for h in hooks:
            h.remove()
    if "gate" in seen:
        return (blocks[block].mlp.act_fn(seen["gate"]) * seen["up"])[0]
    return blocks[block].intermediate.intermediate_act_fn(seen["dense"])[0]


@pytest.mark.parametrize("arch", LANGUAGE)
def test_mlp_units_are_the_post_activation_neurons_averaged_per_word(tiny_models, scenes_small, tmp_path, arch):
    samples = scenes_small[0]
    out = _units(tiny_models, samples, arch, tmp_path / "u.zarr", layers=[1, 2], spec={"units": "mlp"})
    ds = open_units(out)
    assert ds.attrs["units"] == "mlp" and ds.sizes["neuron"] == 64  # intermediate_size, not hidden_size (32)
    lm = load_model({"source": f"local:{tiny_models[arch]}"})
    df, _ = read_samples(samples)
    acts = ds["activations"].values
    sample_ids = ds["sample_id"].values
    for row in (0, 7):
        text, sid = df["text"].iloc[row], df["sample_id"].iloc[row]
        _, words, word_ids = hand_word_activations(lm, text)
        mine = acts[sample_ids == sid]
        assert len(mine) == len(words)
        for slot, layer in enumerate([1, 2]):
            units = _mlp_by_other_hooks(lm, text, layer - 1).numpy()
            enc = lm.processor(text, return_offsets_mapping=True, return_special_tokens_mask=True)
            from convergence.rosetta.units import word_token_weights

            weights = word_token_weights(words, enc["offset_mapping"], enc["special_tokens_mask"], sid)
            np.testing.assert_allclose(mine[:, slot], weights @ units, rtol=1e-4, atol=1e-5)


def test_mlp_units_name_the_model_and_modules_when_no_mlp_is_found():
    from convergence.rosetta.units import mlp_sites

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ffn = torch.nn.Linear(4, 4)

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block(), Block()])

    with pytest.raises(UnitsError, match=r"found no MLP in Odd block 0 \(Block\); searched blocks\.0\.mlp\.down_proj, "
                                         r"blocks\.0\.intermediate, .*blocks\.0\.fc2"):
        mlp_sites(Odd(), [1], n_hidden_states=3)
    with pytest.raises(UnitsError, match="Odd: found no list of 5 transformer blocks"):
        mlp_sites(Odd(), [1], n_hidden_states=6)
    with pytest.raises(UnitsError, match="units: mlp has no layer 0"):
        mlp_sites(Odd(), [0, 1], n_hidden_states=3)


def test_mlp_units_are_for_language_models_only(tiny_models, scenes_small, tmp_path):
    with pytest.raises(UnitsError, match="units: mlp is for language models"):
        _units(tiny_models, scenes_small[0], "vit", tmp_path / "v.zarr", spec={"units": "mlp"})


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_unit_kinds_from_one_pass_equal_each_kind_on_its_own(tiny_models, scenes_small, tmp_path, arch):
    """`kinds=[mlp, residual]` writes a folder with one store per kind, each equal to extracting it alone."""
    from convergence.rosetta.units import units_path

    samples = scenes_small[0]
    folder = _units(tiny_models, samples, arch, tmp_path / "both", layers=[1, 2], kinds=["mlp", "residual"])
    assert sorted(p.name for p in folder.iterdir()) == ["mlp.zarr", "residual.zarr"]
    for kind in ("mlp", "residual"):
        alone = open_units(_units(tiny_models, samples, arch, tmp_path / f"{kind}.zarr", layers=[1, 2],
                                  spec={"units": kind}))
        both = open_units(units_path(folder, kind))
        assert both.attrs["units"] == kind and both.sizes["neuron"] == {"mlp": 64, "residual": 32}[kind]
        np.testing.assert_array_equal(both["activations"].values, alone["activations"].values)
        assert both["sample_id"].values.tolist() == alone["sample_id"].values.tolist()
    every = _units(tiny_models, samples, arch, tmp_path / "all", kinds=["mlp", "residual"])  # units_layers: all
    assert open_units(units_path(every, "residual"))["layer"].values.tolist() == [0, 1, 2]
    assert open_units(units_path(every, "mlp"))["layer"].values.tolist() == [1, 2]  # no MLP makes layer 0
    with pytest.raises(UnitsError, match="units: mlp is for language models"):
        _units(tiny_models, samples, "vit", tmp_path / "v", kinds=["mlp", "residual"])
    with pytest.raises(UnitsError, match="kinds must name each unit kind once"):
        _units(tiny_models, samples, arch, tmp_path / "twice", kinds=["mlp", "mlp"])
    assert not (tmp_path / "v").exists() and not (tmp_path / "twice").exists()


# ---------------------------------------------------------------- vision activation units (privileged basis)


def _vision_by_hand(lm, image, site) -> torch.Tensor:
    """One image's map at `site` by another route: forward hooks on the layers *before* the nonlinearity,
    which is then applied here (`site(captured)` -> `[1, C, H, W]` or tokens)."""
    pixels = lm.processor(images=[image], return_tensors="pt")["pixel_values"]
    seen = {}
    module, act = site
    hook = module.register_forward_hook(lambda m, i, o: seen.__setitem__("pre", o))
    try:
        with torch.inference_mode():
            lm.model(pixel_values=pixels)
    finally:
        hook.remove()
    return act(seen["pre"])


def _as_cells(fmap: torch.Tensor, grid: int) -> np.ndarray:
    if fmap.ndim == 3:  # tokens: CLS + 4x4 patches (32 px images, 8 px patches)
        fmap = fmap[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    fmap = F.interpolate(fmap.float(), size=(grid, grid), mode="bilinear", align_corners=False)[0]
    return fmap.permute(1, 2, 0).reshape(grid * grid, -1).numpy()


@pytest.fixture(scope="module")
def lite0_random(tmp_path_factory):
    """An EfficientNet-Lite0 folder with the TF initialisation (seeded): the real module, no download."""
    from convergence.vision import efficientnet as E

    model = E.EfficientNetLite(E.EfficientNetLiteConfig("efficientnet-lite0"))
    model.reset_parameters_tf(7)
    return E.save_folder(model, tmp_path_factory.mktemp("lite0") / "lite0")


def test_efficientnet_activation_units_are_its_relu6_units(lite0_random, scenes_small, tmp_path):
    """Activation layer 5 = ReLU6 of the depthwise stage of stage 5's last block (the projection's input); 8 = the
    head's ReLU6 features; 0 = the stem. Residual layer 5 = the block's (linear) output, a different basis."""
    from PIL import Image

    from convergence.rosetta.units import units_path

    samples = scenes_small[0]
    spec = {"source": f"local:{lite0_random}", "modality": "vision", "batch_size": 8,
            "units_layers": {"activation": [5], "residual": [5]}}
    grid = 3
    folder = extract_units(samples, spec, tmp_path / "u", model_name="lite0", progress=False, store_dtype="float32",
                           grid=grid, kinds=["activation", "residual"])
    act, res = open_units(units_path(folder, "activation")), open_units(units_path(folder, "residual"))
    assert act.attrs["units"] == "activation" and act.sizes["neuron"] == 672 and res.sizes["neuron"] == 112
    head = open_units(extract_units(samples, {**spec, "units_layers": [8]}, tmp_path / "h.zarr", model_name="lite0",
                                    progress=False, store_dtype="float32", grid=grid))  # a single kind: activation
    stem = open_units(extract_units(samples, {**spec, "units_layers": [0]}, tmp_path / "s.zarr", model_name="lite0",
                                    progress=False, store_dtype="float32", grid=grid))
    assert head.attrs["units"] == "activation" and head.sizes["neuron"] == 1280 and stem.sizes["neuron"] == 32
    lm = load_model(spec)
    last = lm.model._blocks[lm.model.stage_ends[4]]
    df, _ = read_samples(samples)
    relu6 = torch.nn.functional.relu6
    for i in (0, 13):
        image = Image.open(df["image"][i]).convert("RGB")
        rows = slice(i * grid * grid, (i + 1) * grid * grid)
        for store, site in [(act, (last._bn1, relu6)), (head, (lm.model._bn1, relu6)), (stem, (lm.model._bn0, relu6)),
                            (res, (last._bn2, lambda h: h))]:
            want = _as_cells(_vision_by_hand(lm, image, site), grid)
            if store is res:  # the block's output adds its skip connection to bn2's
                want = _as_cells(_vision_by_hand(lm, image, (last, lambda h: h)), grid)
            np.testing.assert_allclose(store["activations"].values[rows, 0], want, rtol=1e-4, atol=1e-5)
    assert (act["activations"].values >= 0).all() and (act["activations"].values <= 6).all()  # ReLU6's range
    assert (res["activations"].values < 0).any()  # the linear bottleneck is not behind a ReLU


@pytest.mark.parametrize("arch", ["vit", "dinov2", "clip", "resnet"])
def test_vision_activation_units_by_architecture(tiny_models, scenes_small, tmp_path, arch):
    """ViTs: the MLP neurons after GELU (all blocks by default, no layer 0); ResNets: their post-ReLU hidden states."""
    from PIL import Image

    grid = 2
    spec = {"source": f"local:{tiny_models[arch]}", "modality": "vision", "batch_size": 7}
    ds = open_units(extract_units(scenes_small[0], spec, tmp_path / "a.zarr", model_name=arch, progress=False,
                                  store_dtype="float32", grid=grid))
    assert ds.attrs["units"] == "activation"  # a vision model's default kind
    lm = load_model(spec)
    df, _ = read_samples(scenes_small[0])
    if arch == "resnet":
        res = open_units(_units(tiny_models, scenes_small[0], arch, tmp_path / "r.zarr", grid=grid))
        assert ds["layer"].values.tolist() == [0, 1, 2]
        np.testing.assert_array_equal(ds["activations"].values, res["activations"].values)
        assert (ds["activations"].values >= 0).all()
        return
    assert ds["layer"].values.tolist() == [1, 2] and ds.sizes["neuron"] == 64  # the MLP width, not the hidden 32
    from convergence.rosetta.units import transformer_blocks

    _, blocks = transformer_blocks(lm.model, lm.n_hidden_states - 1)
    image = Image.open(df["image"][5]).convert("RGB")
    for slot, layer in enumerate([1, 2]):
        block = blocks[layer - 1]
        if hasattr(block, "intermediate"):  # BERT-style ViT: dense, then its activation
            site = (block.intermediate.dense, block.intermediate.intermediate_act_fn)
        else:  # fc1, then the activation
            mlp = block.mlp
            site = (mlp.fc1, getattr(mlp, "activation_fn", None) or mlp.activation)
        want = _as_cells(_vision_by_hand(lm, image, site), grid)
        np.testing.assert_allclose(ds["activations"].values[5 * grid * grid:6 * grid * grid, slot], want,
                                   rtol=1e-4, atol=1e-5)


def test_vision_unit_kinds_are_checked(tiny_models, scenes_small, tmp_path):
    samples = scenes_small[0]
    with pytest.raises(UnitsError, match="units: activation is for vision models"):
        _units(tiny_models, samples, "bert", tmp_path / "b.zarr", spec={"units": "activation"})

    class NoSites(torch.nn.Module):
        pass

    from convergence.rosetta.units import activation_sites

    with pytest.raises(UnitsError, match=r"NoSites .*Use units: residual for this model"):
        activation_sites(NoSites(), [1], n_hidden_states=3)
