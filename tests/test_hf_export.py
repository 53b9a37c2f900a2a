"""Exports as the Hugging Face ecosystem uses them: plain transformers (in a subprocess, no harness
import) must render the training prompt, generate the harness's normal-mode answers and score the
same; a p-MoD export must not load as a dense model."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dualspeed.models.build import build_tiny, tiny_image_processor
from dualspeed.models.checkpoint import export_hf, load_exported
from dualspeed.config import TinyModelConfig
from dualspeed.data.conversation import IMAGE_TOKEN, build_prompt
from dualspeed.evaluation.predictor import Predictor, Query
from dualspeed.models.llava import DualSpeedLlava

SCRIPT = Path(__file__).with_name("plain_hf_roundtrip.py")
PINPOINTS = [[16, 32], [32, 16], [32, 32]]


def plain_transformers(ckpt, queries, tmp_path):
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"ckpt": str(ckpt), "queries": queries}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # run from tmp_path so that the harness cannot be imported by accident
    p = subprocess.run([sys.executable, str(SCRIPT), str(job)], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def queries(synth_dir, n=4, wide=None):
    """Questions of the eval sets with their answers; `wide` re-saves every other image at 32x16."""
    from PIL import Image

    out = []
    for task in ("colour", "count"):
        for i, r in enumerate(json.loads((synth_dir / f"eval_{task}.json").read_text())[: n // 2]):
            path = synth_dir / r["image"]
            if wide is not None and i % 2:
                path = wide / Path(r["image"]).name
                Image.open(synth_dir / r["image"]).resize((32, 16)).save(path)
            out.append({"image": str(path), "question": r["question"], "answer": r["answer"]})
    return out


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_plain_transformers_reproduces_the_harness(family, synth_dir, tokenizer, tmp_path):
    crop = 32 if family == "llava" else 16
    pinpoints = PINPOINTS if family == "llava_next" else None
    torch.manual_seed(0)
    model = DualSpeedLlava(build_tiny(TinyModelConfig(image_size=crop), tokenizer, seed=3, grid_pinpoints=pinpoints), 4)
    export_hf(model.eval(), tokenizer, tiny_image_processor(crop, pinpoints), tmp_path / "hf", {"isolator_len": 4})
    wide = None
    if family == "llava_next":  # a non-square image exercises the processor's unpadded token count
        wide = tmp_path / "wide"
        wide.mkdir()
    qs = queries(synth_dir, wide=wide)
    plain = plain_transformers(tmp_path / "hf", qs, tmp_path)

    pred = Predictor(tmp_path / "hf", mode="normal", batch_size=1)
    ours = pred.predict([Query(q["question"], q["image"]) for q in qs])
    assert plain["answers"] == ours
    assert len({round(x, 3) for x in plain["nll"]}) == len(qs)  # every score is its own: a real comparison
    for q, nll in zip(qs, plain["nll"]):
        ref, _ = pred.score(Query(q["question"], q["image"]), q["answer"])
        assert nll == pytest.approx(ref, rel=1e-4, abs=1e-4)
    # the chat template renders the training prompt token for token (the image placeholder expanded)
    conv = [{"from": "human", "value": IMAGE_TOKEN + "\n" + qs[0]["question"]}, {"from": "gpt", "value": ""}]
    ids, _ = build_prompt(pred.tokenizer, conv, "vicuna_v1", for_generation=True)
    plain_ids = plain["input_ids"][0]
    image_id = pred.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    collapsed = [t for i, t in enumerate(plain_ids) if t != image_id or plain_ids[i - 1] != image_id]
    assert collapsed == ids
    assert plain_ids.count(image_id) == pred.summary()["visual_tokens_per_sample"] or family == "llava_next"


def test_chat_template_renders_multi_turn_like_training(tokenizer):
    from dualspeed.data.conversation import chat_template

    conv = [{"from": "human", "value": IMAGE_TOKEN + "\nWhat colour is the object ?"}, {"from": "gpt", "value": "red"},
            {"from": "human", "value": "How many objects are there ?"}, {"from": "gpt", "value": "one"}]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the object ?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
                {"role": "user", "content": "How many objects are there ?"},
                {"role": "assistant", "content": "one"}]
    text = tokenizer.apply_chat_template(messages, chat_template=chat_template(), tokenize=False)
    assert "to the user's questions. USER: <image>\n" in text  # conv_vicuna_v1's system prompt
    assert tokenizer(text).input_ids == build_prompt(tokenizer, conv, "vicuna_v1")[0]
    # the synthetic tokenizer carries the same template and no token_type_ids
    assert tokenizer.chat_template == chat_template()
    assert "token_type_ids" not in tokenizer("a").keys()


def test_pmod_export_refuses_to_load_as_dense_and_loads_through_the_harness(tokenizer, batch, tmp_path):
    torch.manual_seed(0)
    model = DualSpeedLlava(build_tiny(TinyModelConfig(), tokenizer, seed=0), 4).eval()
    model.enable_pmod(ratios=[None, 0.25])
    export_hf(model, tokenizer, tiny_image_processor(32), tmp_path / "hf", {"isolator_len": 4})
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["architectures"] == ["DualSpeedPModLlavaForConditionalGeneration"]
    code = ("import sys; from transformers import AutoModelForImageTextToText as A; "
            "A.from_pretrained(sys.argv[1])")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "hf")], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode != 0 and "dualspeed_pmod_llava" in p.stderr, p.stderr[-2000:]
    back, *_ = load_exported(tmp_path / "hf")
    assert back.pmod is not None and back.pmod.ratios == [None, 0.25]
    with torch.no_grad():
        torch.testing.assert_close(back(**batch).answer_logits, model(**batch).answer_logits)
