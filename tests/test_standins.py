"""The tiny stand-ins play exactly the roles of CLIP and Vicuna: the LLM learns from text alone (never a visual
token before stage 1) and the CLIP from image-caption pairs alone (never the LLM)."""
import json

import pytest
import torch
from transformers import CLIPModel, LlamaForCausalLM
from transformers.models.llama import modeling_llama

from dualspeed.data.conversation import IMAGE_TOKEN
from dualspeed.data.synth import SynthConfig, generate
from dualspeed.data.vocab import unknown_words
from pathlib import Path

import yaml

from dualspeed.grid.plan_check import check
from dualspeed.grid.recipe import pretrain_spec, standin_dir, standin_spec
from dualspeed.grid.variants import point
from dualspeed.train.standin.__main__ import run

TRAIN = {"max_steps": 3, "batch_size": 8, "logging_steps": 1}


def _spec(synth_dir, tmp_path, kind):
    data = {"clip": "clip.json", "llm": "corpus.json"}[kind]
    tok = {"clip": "clip_tokenizer", "llm": "tokenizer"}[kind]
    return {"kind": kind, "output_dir": str(tmp_path / kind), "data": str(synth_dir / data),
            "image_folder": str(synth_dir), "tokenizer": str(synth_dir / tok), "train": TRAIN}


def test_llm_standin_never_reads_a_visual_token(synth_dir, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    image_id = AutoTokenizer.from_pretrained(synth_dir / "tokenizer").convert_tokens_to_ids(IMAGE_TOKEN)
    seen = []
    real = modeling_llama.LlamaModel.forward

    def spy(self, input_ids=None, *a, **k):  # every id the LLM reads in its own pretraining
        seen.append(input_ids.clone())
        return real(self, input_ids, *a, **k)

    monkeypatch.setattr(modeling_llama.LlamaModel, "forward", spy)
    timing = run(_spec(synth_dir, tmp_path, "llm"))
    assert len(seen) == TRAIN["max_steps"]
    assert all(not (ids == image_id).any() for ids in seen)
    assert timing["saw"]["image_tokens"] == 0 and timing["saw"]["images"] == 0
    model = LlamaForCausalLM.from_pretrained(tmp_path / "llm" / "hf")
    assert not any("vision" in n or "projector" in n for n, _ in model.named_parameters())


def test_llm_standin_refuses_a_corpus_with_an_image(synth_dir, tmp_path):
    bad = tmp_path / "corpus.json"
    bad.write_text(json.dumps([{"text": "one object : a red object"}, {"text": f"{IMAGE_TOKEN} a red object"}]))
    spec = {**_spec(synth_dir, tmp_path, "llm"), "data": str(bad)}
    with pytest.raises(ValueError, match=r"document #1 holds <image>"):
        run(spec)


def test_clip_standin_never_runs_the_llm(synth_dir, tmp_path, monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("the CLIP stand-in's pretraining ran the LLM")

    monkeypatch.setattr(modeling_llama.LlamaModel, "forward", forbidden)
    timing = run(_spec(synth_dir, tmp_path, "clip"))
    assert timing["saw"]["language_model"] is None and timing["saw"]["image_caption_pairs"] > 0
    clip = CLIPModel.from_pretrained(tmp_path / "clip" / "hf")
    assert clip.vision_model.config.num_hidden_layers >= 1


def test_the_grid_composes_stage_1_from_the_two_standins(synth_dir):
    """Stage 1 starts from the two stand-ins, each trained on its own data, with a fresh projector."""
    root = Path(__file__).resolve().parents[1]
    cfg = check(yaml.safe_load((root / "config" / "config.yaml").read_text()),
                root / "workflow" / "schemas" / "config.schema.yaml")
    llm, clip = standin_spec(cfg, "llm"), standin_spec(cfg, "clip")
    assert llm["data"].endswith("corpus.json") and clip["data"].endswith("clip.json")
    pt = point("baseline", "none", 0, 0)
    model = pretrain_spec(cfg, pt)["model"]
    assert model["source"] == "compose" and model["llm"] == f"{standin_dir(cfg, 'llm')}/hf"
    assert model["vision_tower"] == f"{standin_dir(cfg, 'clip')}/hf"
    assert pretrain_spec(cfg, pt)["train"]["llm"] == "frozen"


def test_every_word_the_tiny_model_reads_is_in_its_vocabulary(tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "d"
    generate(out, SynthConfig(seed=3, n_clip=16, n_corpus=64, n_pretrain=8, n_sft=16, n_text_only=4, n_eval=4))
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    texts = [d.get("text") or " ".join(t["value"] for t in d["conversations"])
             for d in json.loads((out / "corpus.json").read_text())]
    texts += [t["value"] for n in ("pretrain", "sft") for r in json.loads((out / f"{n}.json").read_text())
              for t in r["conversations"]]
    texts += [r["caption"] for r in json.loads((out / "clip.json").read_text())]
    assert unknown_words(tok, texts) == {}
    assert unknown_words(tok, ["a rectangle"]) == {"rectangle": 1}


def test_llm_standin_reads_repeated_text_first_then_the_whole_corpus(synth_dir, tmp_path, monkeypatch):
    seen = []
    real = modeling_llama.LlamaModel.forward

    def spy(self, input_ids=None, attention_mask=None, *a, **k):
        seen.append([ids[m.bool()].tolist() for ids, m in zip(input_ids, attention_mask)])
        return real(self, input_ids, attention_mask, *a, **k)

    monkeypatch.setattr(modeling_llama.LlamaModel, "forward", spy)
    run({**_spec(synth_dir, tmp_path, "llm"), "train": {**TRAIN, "max_steps": 4, "copy_steps": 2}})

    def repeated(ids):  # <s> run run </s>
        body = ids[1:-1]
        return len(body) % 2 == 0 and body[:len(body) // 2] == body[len(body) // 2:]

    assert all(repeated(ids) for batch in seen[:2] for ids in batch)
    assert not all(repeated(ids) for batch in seen[2:] for ids in batch)


def test_the_probe_asks_each_task_in_words_and_scores_copying(synth_dir, tmp_path):
    from dualspeed.train.standin.probe import probe

    run({**_spec(synth_dir, tmp_path, "llm"), "train": {**TRAIN, "bf16": True}})
    res = probe(str(tmp_path / "llm" / "hf"), n=4)
    assert set(res) == {"colour", "count", "presence", "position", "copies_%"}
    # shares of 4 questions a task and of 2 predicted words in each of 4 runs
    assert all(0 <= v <= 100 and (v * 4 / 100).is_integer() for k, v in res.items() if k != "copies_%")
    assert 0 <= res["copies_%"] <= 100 and (res["copies_%"] * 8 / 100).is_integer()
