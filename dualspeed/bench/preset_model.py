"""The model and the training batch a preset describes: the real architecture at full depth with random
weights (the compute per step is the same as with trained ones), trainable parts as in the recipe."""
from __future__ import annotations

import torch
from transformers import CLIPVisionConfig, LlamaConfig

from ..config import RunConfig
from ..models import causal_mask
from ..models.build import llava_config
from ..models.llava import DualSpeedLlava
from ..train.freeze import set_trainable
from .presets import next_pinpoints


def build(p: dict, device, dtype) -> DualSpeedLlava:
    vision = CLIPVisionConfig(hidden_size=p["vis_d"], intermediate_size=4 * p["vis_d"], num_hidden_layers=p["vis_layers"],
                              num_attention_heads=max(1, p["vis_d"] // 64), image_size=p["grid"] * 14, patch_size=14)
    text = LlamaConfig(vocab_size=p["vocab"], hidden_size=p["d"], intermediate_size=p["inter"],
                       num_hidden_layers=p["layers"], num_attention_heads=p["heads"], num_key_value_heads=p["heads"],
                       max_position_embeddings=4096)
    cfg, cls = llava_config(vision, text, next_pinpoints(p["grid"] * 14) if p.get("anyres") else None,
                             image_token_index=p["vocab"] - 1, vision_feature_layer=-1,
                             vision_feature_select_strategy="default")
    # initialise in place on the device, in the target dtype: a 7B model built on the CPU in fp32
    # would take minutes and 27 GB
    causal_mask.install()  # as the training and evaluation processes build their masks
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = DualSpeedLlava(cls(cfg), isolator_len=4)
    finally:
        torch.set_default_dtype(default)
    run_cfg = RunConfig()
    run_cfg.train.llm = p["llm"]  # LoRA settings: the recipe's defaults (r 128, alpha 256, all linear layers)
    if "lora_r" in p:  # the tiny recipe's r, alpha 2r
        run_cfg.train.lora.r, run_cfg.train.lora.alpha = p["lora_r"], 2 * p["lora_r"]
    set_trainable(model, run_cfg)  # the trainer's own freezing, LoRA included
    model.to(device)
    if device == "cuda":
        model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def batch(p: dict, device, dtype, gen):
    b, t = p["batch"], p["text"]
    ids = torch.randint(0, p["vocab"] - 2, (b, t), generator=gen)
    ids[:, 4] = p["vocab"] - 1  # the image placeholder
    labels = torch.full_like(ids, -100)
    labels[:, -8:] = ids[:, -8:]  # an 8-token answer
    side = p["grid"] * 14
    out = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device),
           "has_image": torch.ones(b, dtype=torch.bool, device=device)}
    if p.get("anyres"):
        out["pixel_values"] = torch.randn(b, 5, 3, side, side, generator=gen).to(device, dtype)
        out["image_sizes"] = torch.tensor([[2 * side, 2 * side]] * b, device=device)
    else:
        out["pixel_values"] = torch.randn(b, 3, side, side, generator=gen).to(device, dtype)
    return out
