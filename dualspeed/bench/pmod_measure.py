"""p-MoD inference as its paper measures it, on a real model: prefill FLOPs counted by torch and the
KV cache the prefill leaves, dense against routed (the analytic counterpart is dualspeed.models.flops.prefill).

    python -m dualspeed.bench flops --measure-pmod"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import DynamicCache

from ..models import flops
from ..models import pmod as pmod_lib
from .preset_model import build
from .presets import PRESETS


def cache_bytes(cache: DynamicCache) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


@torch.no_grad()
def measure_prefill(model, text: int = 40, seed: int = 0) -> dict:
    """One image sample with `text` text tokens through a p-MoD DualSpeedLlava's prefill, dense (normal) and
    routed (pmod): counted FLOPs (tower, projector, LLM, the LM head on the last position) and KV-cache bytes.

    Attention must be eager for the counter to see it on a CPU (model.llava.set_attn_implementation)."""
    if model.pmod is None:
        raise ValueError("measure_prefill needs a p-MoD model: call model.enable_pmod() first")
    cfg = model.config
    dev = model.llava.lm_head.weight.device
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.text_config.vocab_size - 2, (1, text + 1), generator=g)
    ids[0, 1] = model.image_token_id
    ids = ids.to(dev)
    mask, labels = torch.ones_like(ids), torch.full_like(ids, -100)
    has_image = torch.ones(1, dtype=torch.bool, device=dev)
    side = cfg.vision_config.image_size
    pixels = torch.randn(1, 3, side, side, generator=g).to(dev, model.llava.lm_head.weight.dtype)
    out = {}
    for mode in ("normal", "pmod"):
        cache = DynamicCache()
        with FlopCounterMode(display=False) as fc:
            visual = model.visual_tokens(pixels, ids, mask, labels, has_image, None, False)
            emb, m, _, vis = model.splice(ids, mask, labels, visual, has_image)
            if mode == "pmod":
                hidden, _ = pmod_lib.prefill(model.language_model, model.pmod, emb, m, vis, cache)
            else:
                hidden = model.language_model(inputs_embeds=emb, attention_mask=m, past_key_values=cache,
                                              use_cache=True).last_hidden_state
            model.llava.lm_head(hidden[:, -1:])
        out[mode] = {"flops": fc.get_total_flops(), "kv_cache_bytes": cache_bytes(cache),
                     "kv_tokens": [layer.keys.shape[2] for layer in cache.layers]}
    out["ratio"] = {k: out["pmod"][k] / out["normal"][k] for k in ("flops", "kv_cache_bytes")}
    return out


def measure_pmod(layers: int = 4, text: int = 40) -> dict:
    """The tiny model (the bench's tiny preset at `layers` LLM layers) with p-MoD per PRD: routed prefill
    counted by FlopCounterMode against the analytic model."""
    p = {**PRESETS["tiny"], "layers": layers}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build(p, "cpu", torch.float32)
    model.llava.set_attn_implementation("eager")  # the counter does not see the CPU's SDPA kernel
    model.enable_pmod()
    got = measure_prefill(model.eval(), text)
    shape = flops.Shape.from_hf(model.config)
    want = {m: flops.prefill(shape, flops.Sample(text, shape.patches, 1), m, pmod_ratios=model.pmod.ratios,
                             attn="eager", kv_bytes=4) for m in ("normal", "pmod")}
    return {"layers": layers, "ratios": model.pmod.ratios, "measured": got,
            "analytic_ratio": {k: want["pmod"][k] / want["normal"][k] for k in ("flops", "kv_cache_bytes")}}
