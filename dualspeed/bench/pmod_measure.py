"""p-MoD inference as its paper measures it, on a real model: prefill FLOPs counted by torch and the
KV cache the prefill leaves, dense against routed (the analytic counterpart is dualspeed.models.flops.prefill).

    python -m dualspeed.bench flops --measure-pmod"""
from __future__ import annotations

import torch

from ..models import flops
from ..models import pmod as pmod_lib
from . import prefill_measure
from .preset_model import build
from .presets import PRESETS


def measure_prefill(model, text: int = 40, seed: int = 0) -> dict:
    """A p-MoD DualSpeedLlava's prefill, dense (normal) against routed (pmod): bench/prefill_measure.py."""
    if model.pmod is None:
        raise ValueError("measure_prefill needs a p-MoD model: call model.enable_pmod() first")
    return prefill_measure.measure_prefill(
        model, "pmod", lambda lm, emb, m, vis, cache: pmod_lib.prefill(lm, model.pmod, emb, m, vis, cache)[0],
        text, seed)


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
