"""PyramidDrop (models/pdrop.py): what it keeps, that it leaves the rest of the model alone, its generation, its
export and its settings. The comparison with the reference's own code is tests/test_pdrop_golden.py."""
import copy
import json

import pytest
import torch

from dualspeed.config import ConfigError, load_config
from dualspeed.models import pdrop


def _spliced(m, batch):
    visual = m.visual_tokens(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], batch["labels"],
                             batch["has_image"], None, False)
    return m.splice(batch["input_ids"], batch["attention_mask"], batch["labels"], visual, batch["has_image"])


def _deep(tiny_model, tokenizer):
    """The tiny fixture's LLaVA with a 4-layer LLM, the tiny recipe's depth."""
    from dualspeed.config import TinyModelConfig
    from dualspeed.models.build import build_tiny
    from dualspeed.models.llava import DualSpeedLlava

    torch.manual_seed(0)
    return DualSpeedLlava(build_tiny(TinyModelConfig(llm_layers=4), tokenizer, seed=0), isolator_len=4).eval()


def test_keeping_every_token_equals_the_dense_model(tiny_model, batch):
    m = copy.deepcopy(tiny_model)
    m.enable_pdrop([1], lam=1.0)
    with torch.no_grad():
        torch.testing.assert_close(m(**batch).answer_logits, tiny_model(**batch).answer_logits, rtol=1e-5, atol=1e-5)


def test_each_stage_keeps_floor_n_lam_k_visual_tokens_and_all_text(tiny_model, tokenizer, batch):
    m = _deep(tiny_model, tokenizer)
    m.enable_pdrop([1, 2, 3], 0.5)
    emb, mask, labels, vis = _spliced(m, batch)
    trace = []
    with torch.no_grad():
        pdrop.forward(m.language_model, m.pdrop, emb, mask, labels, vis, trace=trace)
    n = vis.sum(1)
    text = mask.sum(1) - n
    for stage, t in enumerate(trace, start=1):
        want = torch.where(n > 0, text + torch.floor(n * 0.5 ** stage).long(), text)
        assert torch.equal(t["mask"].sum(1), want), stage
        assert torch.equal(t["position_ids"][t["mask"].bool()],
                           torch.cat([torch.arange(int(k)) for k in want]))  # reset to 0..len-1
        no_image = (n == 0).nonzero().flatten().tolist()
        assert no_image and all(t["kept"][b] is None for b in no_image)  # a text-only sample passes through


def test_kept_tokens_are_the_top_attended_by_the_next_layer(tiny_model, tokenizer, batch):
    """The ranking against transformers' own eager attention probabilities of the next layer."""
    m = _deep(tiny_model, tokenizer)
    m.llava.set_attn_implementation("eager")
    m.enable_pdrop([2], 0.5)
    emb, mask, labels, vis = _spliced(m, batch)
    trace = []
    with torch.no_grad():
        pdrop.forward(m.language_model, m.pdrop, emb, mask, labels, vis, trace=trace)
        out = m.language_model(inputs_embeds=emb, attention_mask=mask, output_attentions=True)
    probs = out.attentions[2].float().mean(1)  # layer 2's attention [B, T, T], mean over heads
    for b, kept in enumerate(trace[0]["kept"]):
        if kept is None:
            continue
        sup = labels[b] != -100
        queries = (sup[1:] & ~sup[:-1]).nonzero().flatten()
        where = vis[b].nonzero().flatten()
        score = probs[b][queries][:, where].mean(0)
        want = where[score.topk(len(kept)).indices.sort().values]
        assert torch.equal(kept, want), b


def test_batch_equals_each_sample_alone(tiny_model, tokenizer, batch):
    m = _deep(tiny_model, tokenizer)
    m.enable_pdrop([1, 2, 3], 0.5)
    with torch.no_grad():
        together = m(**batch)
        per, img = [], 0
        for b in range(batch["input_ids"].shape[0]):
            n = int(batch["attention_mask"][b].sum())
            one = {k: batch[k][b:b + 1, :n] for k in ("input_ids", "attention_mask", "labels")}
            one["has_image"] = batch["has_image"][b:b + 1]
            if bool(batch["has_image"][b]):
                one["pixel_values"] = batch["pixel_values"][img:img + 1]
                img += 1
            per.append(m(**one).answer_logits)
    torch.testing.assert_close(together.answer_logits, torch.cat(per), rtol=1e-4, atol=1e-4)


def test_every_answer_span_is_a_query(tiny_model, batch):
    labels = torch.full((1, 12), -100)
    labels[0, 3:5] = 7
    labels[0, 8:10] = 7
    q = pdrop.query_positions(labels, torch.ones(1, 12), pdrop.QUERY_ANSWERS)
    assert q[0].tolist() == [2, 7]
    assert pdrop.query_positions(None, torch.tensor([[1, 1, 1, 0]]), pdrop.QUERY_LAST)[0].tolist() == [2]


def test_left_padding_is_refused(tiny_model, tokenizer, batch):
    m = _deep(tiny_model, tokenizer)
    m.enable_pdrop([1, 2, 3], 0.5)
    emb, mask, labels, vis = _spliced(m, batch)
    with pytest.raises(ValueError, match="pdrop.padding_side"):
        pdrop.forward(m.language_model, m.pdrop, emb.flip(1), mask.flip(1), labels.flip(1), vis.flip(1))


def test_gradient_checkpointing_gives_the_same_gradient(tiny_model, tokenizer, batch):
    grads = []
    for ckpt in (False, True):
        m = _deep(tiny_model, tokenizer).train()
        m.enable_pdrop([1, 2, 3], 0.5)
        if ckpt:
            m.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        m(**batch).ce.backward()
        grads.append(m.llava.model.multi_modal_projector.linear_1.weight.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0])


def _left_padded(batch, pad_id):
    ids, mask = batch["input_ids"].clone(), batch["attention_mask"].clone()
    for b in range(ids.shape[0]):  # prompts: everything before the first answer token, moved to the right end
        n = int((batch["labels"][b] == -100).logical_and(mask[b].bool()).cumprod(0).sum())
        row = ids[b, :n].clone()
        ids[b], mask[b] = pad_id, 0
        ids[b, -n:], mask[b, -n:] = row, 1
    return ids, mask


def test_keeping_everything_generates_what_transformers_generates(tiny_model, tokenizer, batch):
    m = _deep(tiny_model, tokenizer)
    ids, mask = _left_padded(batch, tokenizer.pad_token_id)
    kw = dict(pixel_values=batch["pixel_values"], has_image=batch["has_image"], max_new_tokens=6,
              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    ref, _ = m.generate(ids, mask, **kw)
    m.enable_pdrop([1, 2, 3], 1.0)  # our right-padded prefill, per-stage positions and cache, nothing dropped
    out, _ = m.generate(ids, mask, **kw)
    assert torch.equal(out, ref[:, :out.shape[1]])


def test_cached_decoding_equals_recomputing_the_dropped_sequence(tiny_model, tokenizer, batch, monkeypatch):
    """Decoding reads each stage's shortened cache at that stage's shifted positions: the same tokens as running
    the whole sequence again with the prompt's last token kept as the query (one sample: no padding)."""
    m = _deep(tiny_model, tokenizer)
    m.enable_pdrop([1, 2, 3], 0.5)
    ids, mask = _left_padded(batch, tokenizer.pad_token_id)
    b = int(batch["has_image"].nonzero()[0])
    n = int(mask[b].sum())
    ids, mask = ids[b:b + 1, -n:], mask[b:b + 1, -n:]
    pix = batch["pixel_values"][:1] if b == 0 else batch["pixel_values"][b:b + 1]
    has = torch.ones(1, dtype=torch.bool)
    out, _ = m.generate(ids, mask, pixel_values=pix, has_image=has, max_new_tokens=5, eos_token_id=None,
                        pad_token_id=tokenizer.pad_token_id)
    labels = torch.full_like(ids, -100)
    emb, emask, _, vis = m.splice(ids, mask, labels, m.visual_tokens(pix, ids, mask, labels, has, None, False), has)
    new = [0]  # tokens generated so far: the prompt's last token, before them, stays the query at every stage
    monkeypatch.setattr(pdrop, "query_positions", lambda labels, mask, how: [mask[0].sum().reshape(1) - 1 - new[0]])
    ref = []
    with torch.no_grad():
        for new[0] in range(5):
            hidden, _, _ = pdrop.forward(m.language_model, m.pdrop, emb, emask, None, vis, pdrop.QUERY_LAST)
            tok = m.llava.lm_head(hidden[:, -1]).argmax(-1)
            ref.append(tok)
            emb = torch.cat([emb, m.embed_tokens(tok[:, None])], 1)
            emask = torch.cat([emask, emask.new_ones(1, 1)], 1)
            vis = torch.cat([vis, vis.new_zeros(1, 1)], 1)
    assert torch.equal(out, torch.stack(ref, 1))


def test_export_is_plain_llava_hf_and_remembers_its_settings(tiny_model, tokenizer, batch, tmp_path):
    from transformers import LlavaForConditionalGeneration

    from dualspeed.models.build import tiny_image_processor
    from dualspeed.models.checkpoint import export_hf, load_exported

    m = _deep(tiny_model, tokenizer)
    m.enable_pdrop([1, 2, 3], 0.5)
    export_hf(m, tokenizer, tiny_image_processor(32), tmp_path / "hf", {"isolator_len": 4})
    plain = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf")  # no custom code, no extra weights
    assert plain.config.model_type == "llava"
    back, _, _, meta = load_exported(tmp_path / "hf")
    assert back.pdrop is None and meta["pdrop"] == {"layers": [1, 2, 3], "lam": 0.5}  # dense unless asked
    back.enable_pdrop(**meta["pdrop"])
    with torch.no_grad():
        torch.testing.assert_close(back(**batch).answer_logits, m(**batch).answer_logits)


BASE = {"output_dir": "x", "model": {"source": "tiny", "tokenizer": "t", "tiny": {"llm_layers": 4}},
        "fastslow": {"prune": False}, "pdrop": {"enabled": True, "layers": [1, 2, 3]}}


@pytest.mark.parametrize("bad, key", [({"pdrop": {"layers": [1, 4]}}, "pdrop.layers"),
                                      ({"pdrop": {"layers": [2, 1]}}, "pdrop.layers"),
                                      ({"pdrop": {"layers": [0, 1]}}, "pdrop.layers"),
                                      ({"pdrop": {"lam": 0.0}}, "pdrop.lam"),
                                      ({"pdrop": {"lam": 1.5}}, "pdrop.lam"),
                                      ({"pdrop": {"padding_side": "left"}}, "pdrop.padding_side"),
                                      ({"pmod": {"enabled": True}}, "pdrop.enabled"),
                                      ({"fastslow": {"prune": True}}, "pdrop.enabled")])
def test_bad_pdrop_settings_name_the_key(bad, key):
    base = copy.deepcopy(BASE)
    for k, v in bad.items():
        base[k] = {**base.get(k, {}), **v}
    with pytest.raises(ConfigError, match=key):
        load_config(base=base)


def test_pdrop_runs_in_pretraining_too():
    load_config(base={**copy.deepcopy(BASE), "train": {"stage": "pretrain", "llm": "frozen"}})


def test_tiny_pdrop_run_trains_and_exports_a_dense_checkpoint(synth_dir, tmp_path):
    """Pretraining and SFT of the tiny recipe's 4-layer LLM with drops after layers 1, 2, 3 (lam 0.5): the
    training FLOPs it records are below the dense run's, and evaluation runs it dense and dropping."""
    from test_train import tiny_cfg

    from dualspeed.evaluation.predictor import Predictor, Query
    from dualspeed.train.run import run

    kw = {"model.tiny.llm_layers": 4, "fastslow.prune": False, "train.max_steps": 3}
    dense = run(tiny_cfg(synth_dir, tmp_path / "dense", **kw))
    out = tmp_path / "pdrop"
    mine = run(tiny_cfg(synth_dir, out, **kw, **{"pdrop.enabled": True, "pdrop.layers": "1,2,3"}))
    assert mine["flops"] < dense["flops"]
    assert json.loads((out / "hf" / "dualspeed.json").read_text())["pdrop"] == {"layers": [1, 2, 3], "lam": 0.5}
    row = json.loads((synth_dir / "eval_count.json").read_text())[0]
    q = [Query(row["question"], synth_dir / row["image"]), Query("a question without an image")]
    for mode in ("normal", "pdrop"):
        p = Predictor(out / "hf", mode=mode, max_new_tokens=3)
        assert len(p.predict(q)) == 2
        assert (p.summary()["pdrop"] is None) == (mode == "normal")


def test_the_grid_trains_pdrop_in_both_stages_and_the_7b_recipes_with_its_own_sft_recipe():
    from pathlib import Path

    import yaml

    from dualspeed.grid.recipe import pretrain_spec, sft_spec
    from dualspeed.grid.variants import point

    root = Path(__file__).parents[1]
    tiny = yaml.safe_load((root / "config" / "config.yaml").read_text())
    pd = point("pdrop", "divprune", 0.9, 0.1)
    assert pd.path == "pdrop/none/p0/r0/s0" and pd.pretrain_tag == "pdrop_s0"  # a pretraining of its own
    for spec in (pretrain_spec(tiny, pd), sft_spec(tiny, pd)):
        assert spec["pdrop"] == {"layers": [1, 2, 3], "lam": 0.5, "enabled": True}
    assert not sft_spec(tiny, point("baseline", "divprune", 0.9, 0.1))["pdrop"]["enabled"]
    for name in ("llava15_7b", "llava_next_7b"):
        cfg = yaml.safe_load((root / "config" / f"{name}.yaml").read_text())
        mine, base = sft_spec(cfg, pd), sft_spec(cfg, point("baseline", "divprune", 0.9, 0.1))
        assert (mine["train"]["llm"], mine["train"]["lr"]) == ("full", 2e-5)
        assert (base["train"]["llm"], base["train"]["lr"]) == ("lora", 2e-4)
        assert mine["pdrop"] == {"layers": [8, 16, 24], "lam": 0.5, "enabled": True}
        load_config(base={**mine, "output_dir": "x"})  # a valid run config
        load_config(base={**pretrain_spec(cfg, pd), "output_dir": "x"})
