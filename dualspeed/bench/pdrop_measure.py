"""PyramidDrop inference as its paper measures it, on a real model: prefill FLOPs counted by torch and the
KV cache the prefill leaves, dense against dropping (the analytic counterpart is dualspeed.models.flops.prefill).

    python -m dualspeed.bench flops --measure-pdrop"""
from __future__ import annotations

import torch

from ..models import flops
from ..models import pdrop as pdrop_lib
from . import prefill_measure
from .preset_model import build
from .presets import PRESETS


def measure_prefill(model, text: int = 40, seed: int = 0) -> dict:
    """A PyramidDrop DualSpeedLlava's prefill, dense (normal) against dropping (pdrop, the last prompt token
    ranking): bench/prefill_measure.py."""
    if model.pdrop is None:
        raise ValueError("measure_prefill needs a PyramidDrop model: call model.enable_pdrop() first")
    return prefill_measure.measure_prefill(
        model, "pdrop", lambda lm, emb, m, vis, cache: pdrop_lib.forward(lm, model.pdrop, emb, m, None, vis,
                                                                         pdrop_lib.QUERY_LAST, cache)[0],
        text, seed)


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
