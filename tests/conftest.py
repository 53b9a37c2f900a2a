import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    from dualspeed.data.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, SynthConfig(seed=0, n_clip=64, n_corpus=64, n_pretrain=64, n_sft=64, n_text_only=16, n_eval=16))
    return out


@pytest.fixture(scope="session")
def tokenizer(synth_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(synth_dir / "tokenizer")


@pytest.fixture()
def tiny_model(tokenizer):
    from dualspeed.config import TinyModelConfig
    from dualspeed.models.build import build_tiny
    from dualspeed.models.llava import DualSpeedLlava

    torch.manual_seed(0)
    return DualSpeedLlava(build_tiny(TinyModelConfig(), tokenizer, seed=0), isolator_len=4).eval()


@pytest.fixture()
def batch(synth_dir, tokenizer):
    """A mixed batch: image samples and a text-only sample, right-padded."""
    import json

    from dualspeed.data.dataset import Collator, LlavaDataset
    from dualspeed.models.build import tiny_image_processor

    ds = LlavaDataset(synth_dir / "sft.json", synth_dir, tokenizer, tiny_image_processor(32))
    rows = json.loads((synth_dir / "sft.json").read_text())
    img = [i for i, r in enumerate(rows) if "image" in r][:3]
    txt = [i for i, r in enumerate(rows) if "image" not in r][:1]
    return Collator(tokenizer.pad_token_id)([ds[i] for i in img + txt])


@pytest.fixture()
def workflow_copy(tmp_path):
    """A copy of what a user runs the pipeline from (Snakefile, rules, configs), in an empty directory,
    so an end-to-end run writes nothing into the checkout."""
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    work = tmp_path / "wf"
    work.mkdir()
    for item in ("Snakefile", "workflow", "config", "environment.yml"):
        src = root / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / item)
    return work


@pytest.fixture()
def registry():
    """VTP methods a test registers are gone after it, so other tests see only the package's own."""
    from dualspeed.vtp.base import _REGISTRY

    before = dict(_REGISTRY)
    yield
    _REGISTRY.clear()
    _REGISTRY.update(before)
