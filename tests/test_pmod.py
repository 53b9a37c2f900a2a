import copy
import json
import math

import pytest
import torch

from dualspeed.models import pmod
from dualspeed.config import ConfigError, load_config


def test_prd_ratios_for_32_layers_match_the_paper():
    r = pmod.prd_ratios(32)
    assert r[:8] == [None] * 8
    assert round(r[8], 2) == 0.84
    assert r[24:] == [0.15] * 8
    assert math.isclose(sum(1.0 if x is None else x for x in r) / 32, 0.5375, abs_tol=5e-4)


def _routed(model, ratios, seed=1):
    m = copy.deepcopy(model)
    m.enable_pmod(ratios=ratios)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-zero routers, so ranking and TanhNorm matter
        for lin in m.pmod.routers.values():
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g))
            lin.bias.copy_(torch.randn(lin.bias.shape, generator=g))
    return m


def test_keep_everything_with_zero_routers_equals_the_dense_model(tiny_model, batch):
    routed = copy.deepcopy(tiny_model)
    routed.enable_pmod(ratios=[1.0, 1.0])  # every vision token kept, w~ = 1 at zero init
    with torch.no_grad():
        dense = tiny_model(**batch).answer_logits
        mod = routed(**batch).answer_logits
    torch.testing.assert_close(mod, dense, rtol=1e-4, atol=1e-4)


def test_mod_layer_keeps_top_k_vision_tokens_and_all_text(tiny_model, batch):
    m = _routed(tiny_model, [None, 0.25])
    visual = m.visual_tokens(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], batch["labels"],
                             batch["has_image"], None, False)
    emb, mask, _, vis = m.splice(batch["input_ids"], batch["attention_mask"], batch["labels"], visual,
                                 batch["has_image"])
    with torch.no_grad():
        _, kept = pmod.prefill(m.language_model, m.pmod, emb, mask, vis)
    text = (mask.bool() & ~vis).sum(1)
    assert torch.equal(kept[0].sum(1), mask.sum(1))  # the dense layer sees every token
    assert torch.equal(kept[1].sum(1), text + (vis.sum(1) * 0.25).floor().long())  # 64 -> 16 per image


def test_routed_batch_equals_each_sample_alone(tiny_model, batch):
    m = _routed(tiny_model, [None, 0.25]).eval()
    with torch.no_grad():
        together = m(**batch, return_logits=True)
        img = 0
        for b in range(batch["input_ids"].shape[0]):
            n = int(batch["attention_mask"][b].sum())
            one = {"input_ids": batch["input_ids"][b:b + 1, :n], "attention_mask": batch["attention_mask"][b:b + 1, :n],
                   "labels": batch["labels"][b:b + 1, :n], "has_image": batch["has_image"][b:b + 1]}
            if bool(batch["has_image"][b]):
                one["pixel_values"] = batch["pixel_values"][img:img + 1]
                img += 1
            alone = m(**one, return_logits=True)
            t = alone.logits.shape[1]
            torch.testing.assert_close(together.logits[b:b + 1, :t][alone.labels != -100],
                                       alone.logits[alone.labels != -100], rtol=1e-4, atol=1e-4)


def test_router_learns_through_both_paths(tiny_model, batch):
    # a router learns only through later layers (the last layer's vision outputs reach no loss), so route layer 0
    tiny_model.enable_pmod(ratios=[0.25, None])
    tiny_model.train()
    tiny_model(**batch).ce.backward()
    w = tiny_model.pmod.routers["0"].weight.grad
    assert w is not None and w.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_router_gradient(tiny_model, batch):
    grads = []
    for ckpt in (False, True):
        m = _routed(tiny_model, [0.25, None]).train()
        if ckpt:
            m.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        m(**batch).ce.backward()
        grads.append(m.pmod.routers["0"].weight.grad)
    torch.testing.assert_close(grads[1], grads[0])


def _left_padded(batch, pad_id):
    ids, mask = batch["input_ids"].clone(), batch["attention_mask"].clone()
    for b in range(ids.shape[0]):  # prompts: everything before the first answer token, moved to the right end
        n = int((batch["labels"][b] == -100).logical_and(mask[b].bool()).cumprod(0).sum())
        row = ids[b, :n].clone()
        ids[b], mask[b] = pad_id, 0
        ids[b, -n:], mask[b, -n:] = row, 1
    return ids, mask


def test_dense_loop_generates_what_transformers_generates(tiny_model, batch, tokenizer):
    ids, mask = _left_padded(batch, tokenizer.pad_token_id)
    loop = copy.deepcopy(tiny_model)
    loop.enable_pmod(ratios=[None, None])  # our decoder loop and KV cache, no routing
    kw = dict(pixel_values=batch["pixel_values"], has_image=batch["has_image"], max_new_tokens=6,
              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    ref, _ = tiny_model.generate(ids, mask, **kw)
    out, _ = loop.generate(ids, mask, **kw)
    assert torch.equal(out, ref[:, :out.shape[1]])


def test_cached_decoding_equals_recomputing_the_routed_sequence(tiny_model, batch, tokenizer):
    m = _routed(tiny_model, [None, 0.25]).eval()
    ids, mask = _left_padded(batch, tokenizer.pad_token_id)
    out, _ = m.generate(ids, mask, pixel_values=batch["pixel_values"], has_image=batch["has_image"],
                        max_new_tokens=5, eos_token_id=None, pad_token_id=tokenizer.pad_token_id)
    # reference: no cache, the whole (routed) sequence recomputed for every new token
    labels = torch.full_like(ids, -100)
    visual = m.visual_tokens(batch["pixel_values"], ids, mask, labels, batch["has_image"], None, False)
    from dualspeed.models.llava import _left_to_right

    r_ids, r_mask = _left_to_right(ids, mask)
    emb, emask, _, vis = m.splice(r_ids, r_mask, labels, visual, batch["has_image"], pad_left=True)
    ref = []
    with torch.no_grad():
        for _ in range(5):
            hidden, _ = pmod.prefill(m.language_model, m.pmod, emb, emask, vis)
            tok = m.llava.lm_head(hidden[:, -1]).argmax(-1)
            ref.append(tok)
            emb = torch.cat([emb, m.embed_tokens(tok[:, None])], 1)
            emask = torch.cat([emask, emask.new_ones(emask.shape[0], 1)], 1)
            vis = torch.cat([vis, vis.new_zeros(vis.shape[0], 1)], 1)
    assert torch.equal(out, torch.stack(ref, 1))


def test_export_keeps_the_routers(tiny_model, batch, tokenizer, tmp_path):
    from dualspeed.models.build import tiny_image_processor
    from dualspeed.models.checkpoint import export_hf, load_exported

    m = _routed(tiny_model, [None, 0.25]).eval()
    export_hf(m, tokenizer, tiny_image_processor(32), tmp_path / "hf", {"isolator_len": 4})
    back, *_ = load_exported(tmp_path / "hf")
    assert back.pmod.ratios == [None, 0.25]
    with torch.no_grad():
        torch.testing.assert_close(back(**batch).answer_logits, m(**batch).answer_logits)


@pytest.mark.parametrize("bad, key", [({"fastslow": {"prune": True}}, "pmod.enabled"),
                                      ({"train": {"stage": "pretrain"}}, "pmod.enabled"),
                                      ({"pmod": {"floor": 0.9, "dense_above": 0.85}}, "pmod.floor")])
def test_bad_pmod_settings_name_the_key(bad, key):
    base = {"output_dir": "x", "model": {"source": "llava", "path": "p"}, "fastslow": {"prune": False},
            "pmod": {"enabled": True}}
    for k, v in bad.items():
        base[k] = {**base.get(k, {}), **v}
    with pytest.raises(ConfigError, match=key):
        load_config(base=base)


def test_tiny_pmod_run_trains_the_routers_of_two_mod_layers(synth_dir, tmp_path):
    """The default tiny recipe's 4-layer LLM: PRD routes layers 1-3 (keep 0.75, 0.25, 0.15); the routers of
    layers 1 and 2 train, the last layer's gets no gradient (its vision outputs reach no loss)."""
    from safetensors.torch import load_file
    from test_train import tiny_cfg

    from dualspeed.train.run import run

    out = tmp_path / "pmod"
    run(tiny_cfg(synth_dir, out, **{"model.tiny.llm_layers": 4, "fastslow.prune": False, "pmod.enabled": True,
                                    "train.max_steps": 4}))
    extra = load_file(out / "hf" / "dualspeed_extra.safetensors")
    assert json.loads((out / "hf" / "dualspeed.json").read_text())["pmod"]["ratios"][0] is None
    moved = {i: float(extra[f"pmod.routers.{i}.weight"].abs().max()) for i in (1, 2, 3)}
    assert moved[1] > 1e-4 and moved[2] > 1e-4, moved
    assert moved[3] == 0.0, moved


def test_real_recipes_train_pmod_with_its_own_sft_recipe():
    from pathlib import Path

    import yaml

    from dualspeed.grid.recipe import sft_spec
    from dualspeed.grid.variants import point

    for name in ("llava15_7b", "llava_next_7b"):
        cfg = yaml.safe_load((Path(__file__).parents[1] / "config" / f"{name}.yaml").read_text())
        pm, base = (sft_spec(cfg, point(v, "divprune", 0.9, 0.1)) for v in ("pmod", "baseline"))
        assert (pm["train"]["llm"], pm["train"]["lr"]) == ("full", 2e-5)
        assert (base["train"]["llm"], base["train"]["lr"]) == ("lora", 2e-4)
        assert "train" not in pm["pmod"] and pm["pmod"]["enabled"]
        load_config(base={**pm, "output_dir": "x"})  # a valid run config
