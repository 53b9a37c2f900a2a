"""PyramidDrop inference as its paper measures it, on a real model: prefill FLOPs counted by torch and the
KV cache the prefill leaves, dense against dropping (the analytic counterpart is dualspeed.models.flops.prefill).

    python -m dualspeed.bench flops --measure-pdrop"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import DynamicCache

from ..models import flops
from ..models import pdrop as pdrop_lib
from .pmod_measure import cache_bytes
from .preset_model import build
from .presets import PRESETS


@torch.no_grad()
def measure_prefill(model, text: int = 40, seed: int = 0) -> dict:
    """One image sample with `text` text tokens through a PyramidDrop DualSpeedLlava's prefill, dense (normal)
    and dropping (pdrop, the last prompt token ranking): counted FLOPs and KV-cache bytes.

    Attention must be eager for the counter to see it on a CPU (model.llava.set_attn_implementation)."""
    if model.pdrop is None:
        raise ValueError("measure_prefill needs a PyramidDrop model: call model.enable_pdrop() first")
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
    for mode in ("normal", "pdrop"):
        cache = DynamicCache()
        with FlopCounterMode(display=False) as fc:
            visual = model.visual_tokens(pixels, ids, mask, labels, has_image, None, False)
            emb, m, _, vis = model.splice(ids, mask, labels, visual, has_image)
            if mode == "pdrop":
                hidden, _, _ = pdrop_lib.forward(model.language_model, model.pdrop, emb, m, None, vis,
                                                 pdrop_lib.QUERY_LAST, cache)
            else:
                hidden = model.language_model(inputs_embeds=emb, attention_mask=m, past_key_values=cache,
                                              use_cache=True).last_hidden_state
            model.llava.lm_head(hidden[:, -1:])
        out[mode] = {"flops": fc.get_total_flops(), "kv_cache_bytes": cache_bytes(cache),
                     "kv_tokens": [layer.keys.shape[2] for layer in cache.layers]}
    out["ratio"] = {k: out["pdrop"][k] / out["normal"][k] for k in ("flops", "kv_cache_bytes")}
    return out


def measure_pdrop(layers: int = 4, text: int = 40) -> dict:
    """The tiny model (the bench's tiny preset at `layers` LLM layers) with PyramidDrop's split at a quarter,
    a half and three quarters of its depth, lam 0.5: prefill counted by FlopCounterMode against the analytic
    model."""
    p = {**PRESETS["tiny"], "layers": layers}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build(p, "cpu", torch.float32)
    model.llava.set_attn_implementation("eager")  # the counter does not see the CPU's SDPA kernel
    how = flops.default_pdrop(layers)
    model.enable_pdrop(how["layers"], how["lam"])
    got = measure_prefill(model.eval(), text)
    shape = flops.Shape.from_hf(model.config)
    want = {m: flops.prefill(shape, flops.Sample(text, shape.patches, 1), m, attn="eager", kv_bytes=4, pdrop=how)
            for m in ("normal", "pdrop")}
    return {"layers": layers, "pdrop": how, "measured": got,
            "analytic": {m: {k: want[m][k] for k in ("flops", "kv_cache_bytes")} for m in want},
            "analytic_ratio": {k: want["pdrop"][k] / want["normal"][k] for k in ("flops", "kv_cache_bytes")}}
