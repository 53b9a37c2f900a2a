"""The tiny stand-ins for CLIP and Vicuna, built from model.tiny's sizes with random weights.

Each is trained alone (dualspeed/train/standin/): the CLIP contrastively on image-caption pairs, the Llama on text.
LLaVA's stage 1 then composes them with a fresh projector (build.load_components, source compose), as it composes
the real CLIP and Vicuna. The same shapes build the random tiny LLaVA of the tests and benchmarks (build_tiny).
"""
from __future__ import annotations

import torch
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, LlamaConfig, LlamaForCausalLM

from ..config import TinyModelConfig

TEXT_POSITIONS = 64  # the CLIP text tower's context: a caption, or an instruction cut to it


def vision_config(t: TinyModelConfig) -> CLIPVisionConfig:
    if t.image_size % t.patch_size:
        raise ValueError(f"tiny.image_size {t.image_size} must be a multiple of tiny.patch_size {t.patch_size}")
    return CLIPVisionConfig(hidden_size=t.vision_hidden, intermediate_size=4 * t.vision_hidden,
                            num_hidden_layers=t.vision_layers, num_attention_heads=t.vision_heads,
                            image_size=t.image_size, patch_size=t.patch_size, projection_dim=t.vision_hidden)


def llm_config(t: TinyModelConfig, tokenizer) -> LlamaConfig:
    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=t.llm_hidden, intermediate_size=t.llm_intermediate,
                       num_hidden_layers=t.llm_layers, num_attention_heads=t.llm_heads,
                       num_key_value_heads=t.llm_heads, max_position_embeddings=t.max_positions,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)


def clip_config(t: TinyModelConfig, tokenizer) -> CLIPConfig:
    """A CLIP whose text tower has the vision tower's width and depth, over the data's own vocabulary."""
    text = dict(vocab_size=len(tokenizer), hidden_size=t.vision_hidden, intermediate_size=4 * t.vision_hidden,
                num_hidden_layers=t.vision_layers, num_attention_heads=t.vision_heads,
                max_position_embeddings=TEXT_POSITIONS, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return CLIPConfig(text_config=text, vision_config=vision_config(t).to_dict(), projection_dim=t.vision_hidden)


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """[grid*grid, dim] 2-D sine-cosine position embeddings, rows then columns, raster order."""
    if dim % 4:
        raise ValueError(f"vision_hidden {dim} must be a multiple of 4 for 2-D sin-cos position embeddings")
    quarter = dim // 4
    freq = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    coords = torch.arange(grid, dtype=torch.float32)
    ang = coords[:, None] * freq[None]  # [grid, quarter]
    one_axis = torch.cat([ang.sin(), ang.cos()], dim=1)  # [grid, dim/2]
    rows = one_axis[:, None, :].expand(grid, grid, -1)
    cols = one_axis[None, :, :].expand(grid, grid, -1)
    return torch.cat([rows, cols], dim=-1).reshape(grid * grid, dim)


def fix_positions(vision_model, t: TinyModelConfig) -> None:
    """Fixed 2-D sin-cos patch positions (as in MAE), not trained: a tower this small, trained this briefly, would
    not learn where each patch is, which a real CLIP knows."""
    pos = vision_model.embeddings.position_embedding.weight
    with torch.no_grad():
        pos[0].zero_()  # CLS
        pos[1:].copy_(sincos_2d(t.image_size // t.patch_size, t.vision_hidden))
    pos.requires_grad_(False)


def new_clip(t: TinyModelConfig, tokenizer, seed: int) -> CLIPModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(clip_config(t, tokenizer))
    fix_positions(model.vision_model, t)
    return model


def new_llm(t: TinyModelConfig, tokenizer, seed: int) -> LlamaForCausalLM:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(llm_config(t, tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
