"""An in-LLM family's inference as its paper measures it, on a real model: prefill FLOPs counted by torch and the
KV-cache bytes the prefill leaves, dense against the family's own prefill (the analytic counterpart is
dualspeed.models.flops.prefill). Used by pmod_measure and pdrop_measure."""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import DynamicCache


def cache_bytes(cache: DynamicCache) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


@torch.no_grad()
def measure_prefill(model, mode: str, prefill: Callable, text: int = 40, seed: int = 0) -> dict:
    """One image sample with `text` text tokens through a DualSpeedLlava's prefill: dense (normal) and `mode`,
    where prefill(language_model, embeds, mask, vision, cache) -> last hidden states. Counted: the tower, the
    projector, the LLM and the LM head on the last position.

    Attention must be eager for the counter to see it on a CPU (model.llava.set_attn_implementation)."""
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
    for m in ("normal", mode):
        cache = DynamicCache()
        with FlopCounterMode(display=False) as fc:
            visual = model.visual_tokens(pixels, ids, mask, labels, has_image, None, False)
            emb, attn, _, vis = model.splice(ids, mask, labels, visual, has_image)
            if m == mode:
                hidden = prefill(model.language_model, emb, attn, vis, cache)
            else:
                hidden = model.language_model(inputs_embeds=emb, attention_mask=attn, past_key_values=cache,
                                              use_cache=True).last_hidden_state
            model.llava.lm_head(hidden[:, -1:])
        out[m] = {"flops": fc.get_total_flops(), "kv_cache_bytes": cache_bytes(cache),
                  "kv_tokens": [layer.keys.shape[2] for layer in cache.layers]}
    out["ratio"] = {k: out[mode][k] / out["normal"][k] for k in ("flops", "kv_cache_bytes")}
    return out
