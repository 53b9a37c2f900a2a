"""The benchmark's presets: the shapes of the tiny model and of the 7B recipes' models, one training batch each.

Every bench command reads them: step time, VTP cost, the FLOPs report (as a FLOPs model case, preset_case).
"""
from __future__ import annotations

from ..models import flops

VICUNA_7B = dict(d=4096, layers=32, heads=32, inter=11008, vocab=32064)
CLIP_L_336 = dict(vis_d=1024, vis_layers=24, grid=24)  # 336 px at patch 14: 576 tokens per crop
PRESETS = {
    # llm: how the LLM trains (frozen = projector and isolator only, as pretraining); r: slow-step probability
    "tiny": dict(d=128, layers=4, heads=4, inter=256, vocab=64, grid=8, vis_d=64, vis_layers=2, text=48, batch=32,
                 llm="full", r=0.1),
    "7b-pretrain": dict(**VICUNA_7B, **CLIP_L_336, text=40, batch=32, llm="frozen", r=0.0),
    "7b-sft": dict(**VICUNA_7B, **CLIP_L_336, text=160, batch=16, llm="lora", r=0.1),
    # LLaVA-NeXT: square 672 px images -> a base crop + 2x2 grid crops of 336 px
    "next-7b-sft": dict(**VICUNA_7B, **CLIP_L_336, text=160, batch=4, llm="lora", r=0.1, anyres=True),
}
PRESETS["tiny-next"] = {**PRESETS["tiny"], "batch": 8, "anyres": True}


def next_pinpoints(crop: int) -> list[list[int]]:
    """LLaVA-NeXT's anyres resolutions ([[336, 672], ...] at 336 px crops), for any crop size."""
    return [[crop, 2 * crop], [2 * crop, crop], [2 * crop, 2 * crop], [3 * crop, crop], [crop, 3 * crop]]


def preset_case(name: str, checkpointing: bool | None = None) -> tuple[flops.Shape, flops.Setup, list[flops.Sample], float]:
    """A preset -> (shape, setup, batch, r) of the FLOPs model; checkpointing as the bench runs it (on a GPU,
    which the 7B presets need) unless given."""
    if name not in PRESETS:
        raise SystemExit(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    p = PRESETS[name]
    shape = flops.Shape(vis_d=p["vis_d"], vis_layers=p["vis_layers"], vis_inter=4 * p["vis_d"], patch=14,
                        image=p["grid"] * 14, d=p["d"], layers=p["layers"], heads=p["heads"], kv_heads=p["heads"],
                        inter=p["inter"], vocab=p["vocab"])
    ckpt = not name.startswith("tiny") if checkpointing is None else checkpointing
    setup = flops.Setup(llm=p["llm"], lora_r=128, checkpointing=ckpt)
    visual, crops = flops.anyres_visual(shape.patches, 2, 2) if p.get("anyres") else (shape.patches, 1)
    # the bench's batch: `text` ids with one placeholder, the last 8 supervised
    return shape, setup, [flops.Sample(p["text"] - 1, visual, crops, 8)] * p["batch"], p["r"]
