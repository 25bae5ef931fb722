import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny_models.py

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A test that changes torch's intra-op thread count must not change it for the tests after it (the
    inter-op count can be set only once per process, so tests must leave it alone)."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    yield
    if before is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test (the machine is shared); `_torch_threads_restored` restores the count.
    Modules whose tests run models use it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """arch -> folder of a tiny random model saved with save_pretrained (llama, gemma3, bert, mpnet)."""
    from tiny_models import ARCHS, save_tiny_model

    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: save_tiny_model(arch, root / arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def scenes_small(tmp_path_factory):
    """A sampled scenes dataset of 40 samples: (parquet path, spec)."""
    from convergence.datasets import sample_dataset

    spec = {"sampler": "scenes", "n": 40, "seed": 3, "image_size": 32}
    out = tmp_path_factory.mktemp("scenes") / "scenes"
    return sample_dataset("scenes", spec, out), spec
