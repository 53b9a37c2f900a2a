"""PyramidDrop against its reference's own code: tests/golden/pdrop/ holds what Cooperx521/PyramidDrop's
pdrop_forward and pdrop_rank_drop produced (transformers 4.37.2, scripts/crosscheck/pdrop_golden.py) for a tiny
random LLM and two fixed batches; the project's models/pdrop.py runs the same weights and inputs here, without the
side venv. Training: three answer spans in one sample, one in another, a text-only sample. Inference: the last
prompt token ranks."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from dualspeed.models import pdrop
from dualspeed.models.llava import Forward, answer_logits

GOLDEN = Path(__file__).parent / "golden" / "pdrop"


@pytest.fixture(scope="module")
def golden():
    return json.loads((GOLDEN / "golden.json").read_text()), load_file(GOLDEN / "weights.safetensors")


def _llm(golden):
    ref, tensors = golden
    m = ref["provenance"]["model"]
    cfg = LlamaConfig(**{k: m[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                           "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                                           "rms_norm_eps")}, attn_implementation="eager")
    llm = LlamaForCausalLM(cfg)
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = llm.load_state_dict(weights, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    settings = pdrop.PDrop(tuple(ref["provenance"]["pdrop"]["layer_list"]), 0.5)
    assert [settings.lam ** (k + 1) for k in range(3)] == ref["provenance"]["pdrop"]["image_token_ratio_list"]
    return llm.eval(), settings


def _run(golden, name, how):
    ref, tensors = golden
    llm, settings = _llm(golden)
    t = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{name}.")}
    trace = []
    with torch.no_grad():
        hidden, labels, _ = pdrop.forward(llm.model, settings, t["inputs_embeds"], t["attention_mask"],
                                          t["labels"] if how == pdrop.QUERY_ANSWERS else None, t["vision"].bool(), how,
                                          trace=trace)
    return ref[name], trace, hidden, labels, llm


@pytest.mark.parametrize("name, how", [("train", pdrop.QUERY_ANSWERS), ("infer", pdrop.QUERY_LAST)])
def test_kept_tokens_and_positions_equal_the_reference(golden, name, how):
    ref, trace, *_ = _run(golden, name, how)
    assert [s["layer"] for s in trace] == [s["layer"] for s in ref["stages"]]
    for mine, theirs in zip(trace, ref["stages"]):
        assert [k.tolist() if k is not None else None for k in mine["kept"]] == theirs["kept"], mine["layer"]
        assert mine["position_ids"].tolist() == theirs["position_ids"], mine["layer"]


def test_training_loss_equals_the_reference(golden):
    ref, _, hidden, labels, llm = _run(golden, "train", pdrop.QUERY_ANSWERS)
    with torch.no_grad():  # as DualSpeedLlava.forward: the LM head on the answer positions, the mean CE
        loss = float(Forward(llm.lm_head(answer_logits(hidden, labels)), labels[:, 1:][labels[:, 1:] != -100]).ce)
    assert abs(loss - ref["loss"]) < 1e-5, (loss, ref["loss"])


def test_inference_last_logits_equal_the_reference(golden):
    ref, trace, hidden, _, llm = _run(golden, "infer", pdrop.QUERY_LAST)
    last = trace[-1]["mask"].sum(1) - 1
    with torch.no_grad():
        mine = llm.lm_head(hidden[torch.arange(hidden.shape[0]), last])
    torch.testing.assert_close(mine, torch.tensor(ref["last_logits"]), rtol=1e-5, atol=1e-5)
