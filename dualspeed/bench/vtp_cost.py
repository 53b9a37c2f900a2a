"""Cost of every registered VTP method on one training batch of a bench preset's shapes.

    python -m dualspeed.bench vtp --preset 7b-sft        # 16 images x 576 tokens x 4096, on this machine
    python -m dualspeed.bench vtp --preset next-7b-sft --batch 16   # 16 images x 5 crops x 576 x 4096

Each method reduces the batch's projected features (all crops at once, as in training) and the
reduction is applied to them: what a fast step adds. Signals are given, at their real shapes: the
instruction embeddings (CDPruner's relevance signal from them, the LLM source, is part of its time; the
CLIP text tower's is not timed), the CLS attention and the keys of one CLIP-L layer (what the tower hooks
add is a CLS-row attention per crop, not timed here).
`python -m dualspeed.bench step` reports these times next to its fast step, as a fraction of it.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from .. import vtp
from ..models import signals
from ..vtp.base import SOURCE_LLM
from .presets import PRESETS
from .timing import mean_ms


def inputs(p: dict, device, dtype, seed: int = 0):
    n = p["grid"] ** 2
    crops = p["batch"] * (5 if p.get("anyres") else 1)
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(crops, n, p["d"], generator=g).to(device, dtype)
    vis_heads = max(1, p["vis_d"] // 64)
    ctx = vtp.VTPContext(text_embeds=torch.randn(crops, p["text"], p["d"], generator=g).to(device, dtype),
                         text_mask=torch.ones(crops, p["text"], dtype=torch.bool, device=device),
                         cls_attention=torch.rand(crops, n, generator=g).to(device),
                         keys=torch.randn(crops, n, p["vis_d"] // vis_heads, generator=g).to(device),
                         generator=torch.Generator(device=device).manual_seed(seed))
    return feats, ctx


def vtp_costs(p: dict, device, dtype, reps: int = 3, p_ratio: float = 0.9, fast_step_s: float | None = None) -> dict:
    """{method: {"ms_per_batch", "fraction_of_fast_step"}} for one batch of crops."""
    feats, ctx = inputs(p, device, dtype)
    k = vtp.keep_count(feats.shape[1], p_ratio)
    out = {}
    for name in vtp.available():
        method = vtp.get(name)

        def step():
            c = ctx
            if "relevance" in method.required_signals():  # the model computes it per batch: time it too
                c = dataclasses.replace(ctx, relevance=signals.llm_relevance(feats, ctx.text_embeds, ctx.text_mask),
                                        relevance_source=SOURCE_LLM)
            method.reduce(feats, k, c).apply(feats)

        ms = mean_ms(step, reps, device)
        out[name] = {"ms_per_batch": ms, "fraction_of_fast_step": ms / 1000 / fast_step_s if fast_step_s else None}
    return {"crops_per_batch": feats.shape[0], "tokens_per_crop": feats.shape[1], "width": feats.shape[2], "k": k,
            "methods": out}


def add_arguments(ap) -> None:
    ap.add_argument("--preset", choices=sorted(PRESETS), default="7b-sft")
    ap.add_argument("--batch", type=int, help="images per batch (default: the preset's)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--p", type=float, default=0.9)
    ap.add_argument("--fast-step-s", type=float, help="a fast step's time to express the costs as a fraction of")
    ap.add_argument("--out")


def command(a) -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    preset = {**PRESETS[a.preset], **({"batch": a.batch} if a.batch else {})}
    res = {"preset": a.preset, "device": torch.cuda.get_device_name(0) if device == "cuda" else
           f"cpu x{torch.get_num_threads()}", "dtype": str(dtype),
           **vtp_costs(preset, device, dtype, a.reps, a.p, a.fast_step_s)}
    text = json.dumps(res, indent=2)
    if a.out:
        Path(a.out).write_text(text)
    print(text)
    return 0
