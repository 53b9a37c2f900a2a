"""Freezing by stage, in one place: what trains in a stage (LLM frozen, LoRA or full; projector; isolator;
p-MoD routers; vision tower), logged with its parameter counts."""
from __future__ import annotations

import logging

import torch

from ..config import RunConfig
from ..models.llava import DualSpeedLlava
from . import lora_dropout

log = logging.getLogger("dualspeed.train")


def set_trainable(model: DualSpeedLlava, cfg: RunConfig) -> dict[str, int]:
    """Freeze/unfreeze by stage in one place; returns trainable parameter counts per part."""
    from peft import LoraConfig, get_peft_model

    t, fs = cfg.train, cfg.fastslow
    model.requires_grad_(False)
    if t.llm == "lora":
        lcfg = LoraConfig(r=t.lora.r, lora_alpha=t.lora.alpha, lora_dropout=t.lora.dropout,
                          target_modules=list(t.lora.target_modules), bias="none")
        model.llava.model.language_model = get_peft_model(model.llava.model.language_model, lcfg)
        lora_dropout.install(model.llava.model.language_model)
    elif t.llm == "full":
        model.language_model.requires_grad_(True)
        model.llava.lm_head.requires_grad_(True)
    model.llava.model.multi_modal_projector.requires_grad_(True)
    if model.anyres:  # LLaVA-NeXT's row separator belongs to the connector: it trains with the projector
        model.llava.model.image_newline.requires_grad_(True)
    model.isolator.requires_grad_(fs.prune and fs.isolator)
    if model.pmod is not None:  # the routers train with the LLM's learning rate, frozen or not
        model.pmod.requires_grad_(True)
    model.train_vision = t.train_vision_tower
    model.llava.model.vision_tower.requires_grad_(t.train_vision_tower)
    parts = {"vision_tower": model.llava.model.vision_tower, "projector": model.llava.model.multi_modal_projector,
             "isolator": model.isolator, "language_model": model.language_model, "lm_head": model.llava.lm_head,
             "pmod_routers": model.pmod if model.pmod is not None else torch.nn.Identity()}
    counts = {k: sum(p.numel() for p in m.parameters() if p.requires_grad) for k, m in parts.items()}
    log.info("trainable parameters: %s", ", ".join(f"{k}={v:,}" for k, v in counts.items()))
    return counts
