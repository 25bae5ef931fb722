"""precision: auto resolves to bf16 only where the device computes it natively; the choice reaches each
OOCR output's provenance; with auto on a CPU without bf16 the results equal explicit fp32."""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from convergence import precision
from convergence.oocr.finetune import FinetuneConfig, finetune
from convergence.oocr.stage import make_data, run_evaluate, run_finetune
from convergence.oocr.tasks import generate
from convergence.utils import read_parquet

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

X86_AVX2 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse sse2 avx avx2 fma f16c\n"
X86_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n"
X86_AMX = "processor\t: 0\nflags\t\t: avx2 avx512f amx_bf16 amx_tile amx_int8\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes sve bf16 i8mm\n"
ARM_NONE = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32\n"


@pytest.fixture
def cpu(monkeypatch, tmp_path):
    """Pretend to be a CPU with the given /proc/cpuinfo text and oneDNN bf16 answer."""

    def make(cpuinfo: str, onednn: bool = True):
        path = tmp_path / "cpuinfo"
        path.write_text(cpuinfo)
        monkeypatch.setattr(precision, "CPUINFO", path)
        monkeypatch.setattr(precision, "onednn_bf16", lambda: onednn)

    return make


@pytest.mark.parametrize("text, flag", [(X86_BF16, "avx512_bf16"), (X86_AMX, "amx_bf16"), (ARM_BF16, "bf16")])
def test_cpu_flags_are_read_from_cpuinfo(tmp_path, text, flag):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    assert flag in precision.cpu_flags(path)
    assert precision.cpu_flags(tmp_path / "absent") is None


@pytest.mark.parametrize("cpuinfo", [X86_AVX2, ARM_NONE])
def test_auto_is_fp32_where_the_cpu_has_no_bf16(cpu, cpuinfo):
    cpu(cpuinfo)
    choice = precision.resolve_precision("auto", "cpu", log=None)
    assert (choice.precision, choice.requested, choice.native_bf16) == ("fp32", "auto", False)
    assert "no native bf16" in choice.reason


@pytest.mark.parametrize("cpuinfo", [X86_BF16, X86_AMX, ARM_BF16])
def test_auto_is_bf16_where_the_cpu_has_it(cpu, cpuinfo):
    cpu(cpuinfo)
    choice = precision.resolve_precision("auto", "cpu", log=None)
    assert (choice.precision, choice.native_bf16) == ("bf16", True)
    assert "natively" in choice.reason


def test_auto_is_fp32_where_onednn_does_not_use_the_flag(cpu):
    cpu(X86_BF16, onednn=False)  # e.g. ONEDNN_MAX_CPU_ISA=AVX2
    choice = precision.resolve_precision("auto", "cpu", log=None)
    assert choice.precision == "fp32" and "oneDNN" in choice.reason


def test_unknown_flags_and_unknown_devices_are_fp32(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: None)
    assert precision.resolve_precision("auto", "cpu", log=None).precision == "fp32"
    assert precision.resolve_precision("auto", "mps", log=None).precision == "fp32"


def test_explicit_choices_run_as_asked_and_bf16_without_support_warns_with_the_slowdown(cpu, monkeypatch):
    cpu(X86_AVX2)
    monkeypatch.setattr(precision, "measure_bf16_slowdown", lambda device: 41.234)
    with pytest.warns(precision.PrecisionWarning, match=r"41\.2x its fp32 time"):
        choice = precision.resolve_precision("bf16", "cpu", log=None)
    assert (choice.precision, choice.bf16_slowdown) == ("bf16", 41.23)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.resolve_precision("fp32", "cpu", log=None).precision == "fp32"
        cpu(X86_BF16)
        assert precision.resolve_precision("bf16", "cpu", log=None).bf16_slowdown is None  # native: no warning


def test_a_bad_precision_is_refused_and_the_choice_is_logged_as_one_line():
    with pytest.raises(ValueError, match="auto, bf16, fp32"):
        precision.resolve_precision("fp16")
    lines = []
    choice = precision.resolve_precision("fp32", log=lines.append)
    assert lines == [choice.line()] and lines[0].startswith("precision fp32 (asked: fp32; cpu)")
    assert json.loads(json.dumps(choice.provenance())) == choice.provenance()


def test_the_probe_times_both_dtypes_and_restores_the_thread_count():
    before = torch.get_num_threads()
    ratio = precision.measure_bf16_slowdown(size=64, repeats=1)
    assert ratio > 0 and np.isfinite(ratio)
    assert torch.get_num_threads() == before


def test_onednn_limited_to_avx2_resolves_auto_to_fp32_for_real():
    """No monkeypatching: oneDNN capped at AVX2 (as on an AVX2-only CPU) makes auto choose fp32."""
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2")
    code = "from convergence.precision import resolve_precision as r; print(r('auto', log=None).precision)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "fp32"


# --------------------------------------------------------------------------- OOCR with auto


@pytest.fixture
def no_bf16(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: (False, "the CPU has no native bf16 (test)"))


@pytest.fixture(scope="module")
def llama_spec(tiny_models):
    return {"source": f"local:{tiny_models['llama']}"}


def _tiny_finetune(tiny_models, precision_name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    docs = generate("coins", 0, flips_per_snippet=10, n_eval_per_type=2).train
    config = FinetuneConfig(steps=6, batch_size=4, lr=1e-2, rank=4, alpha=8, layers=1, precision=precision_name)
    return finetune(docs, model, tokenizer, config=config, progress=False)


def test_finetune_with_auto_without_bf16_equals_explicit_fp32(no_bf16, tiny_models, one_torch_thread):
    auto, fp32 = _tiny_finetune(tiny_models, "auto"), _tiny_finetune(tiny_models, "fp32")
    assert auto.precision.precision == "fp32" and auto.precision.requested == "auto"
    assert auto.losses == fp32.losses
    for (name, a), (_, b) in zip(auto.model.named_parameters(), fp32.model.named_parameters()):
        assert torch.equal(a, b), name


def test_finetune_with_auto_and_native_bf16_autocasts(monkeypatch, tiny_models, one_torch_thread):
    monkeypatch.setattr(precision, "native_bf16", lambda device: (True, "native (test)"))
    auto, fp32 = _tiny_finetune(tiny_models, "auto"), _tiny_finetune(tiny_models, "fp32")
    assert auto.precision.precision == "bf16"
    assert auto.losses != fp32.losses  # bf16 products round differently: autocast was on


def test_stage_outputs_record_the_choice_and_auto_scores_equal_fp32(no_bf16, llama_spec, tmp_path, one_torch_thread):
    data = make_data("coins", 0, tmp_path / "data.json", flips_per_snippet=10, n_eval_per_type=2)
    scores = {}
    for name in ("auto", "fp32"):
        adapter = run_finetune(data, llama_spec, tmp_path / name / "adapter", steps=4, batch_size=4, lr=1e-2, rank=4,
                               alpha=8, threads=1, precision=name)
        provenance = json.loads((adapter / "provenance.json").read_text())["precision"]
        assert (provenance["precision"], provenance["requested"], provenance["native_bf16"]) == ("fp32", name, False)
        assert provenance["reason"]
        saved = json.loads((adapter / "finetune_config.json").read_text())
        assert (saved["precision"], saved["precision_used"]) == (name, "fp32")
        outputs = {c: tmp_path / name / f"{c}.parquet" for c in ("untuned", "finetuned")}
        run_evaluate(data, llama_spec, outputs, adapter_dir=adapter, samples=1, max_new_tokens=4, threads=1,
                     precision=name)
        for condition, path in outputs.items():
            frame, meta = read_parquet(path)
            assert meta["condition"] == condition and meta["precision"]["precision"] == "fp32"
            assert meta["precision"]["requested"] == name
            scores[name, condition] = frame
    for condition in ("untuned", "finetuned"):
        pd.testing.assert_frame_equal(scores["auto", condition], scores["fp32", condition])


def test_torch_threads_sets_the_count_inside_and_restores_it_after_an_error_too():
    from convergence.utils import torch_threads

    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with torch_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(other):
        raise RuntimeError
    assert torch.get_num_threads() == before
