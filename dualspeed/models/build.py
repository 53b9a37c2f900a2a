"""Building and loading the llava-hf container: the tiny model from config, an LLM + CLIP composed with
a fresh projector, or a llava-hf checkpoint of either family (LLaVA-1.5, LLaVA-NeXT)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
)

from ..config import ModelConfig, TinyModelConfig
from ..data.conversation import IMAGE_TOKEN
from . import standins
from .tokenizer import add_llava_tokens, load_tokenizer


def tiny_image_processor(size: int, grid_pinpoints: list | None = None):
    if grid_pinpoints:
        return LlavaNextImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                       image_grid_pinpoints=[list(g) for g in grid_pinpoints])
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              do_resize=True, do_center_crop=True)


def check_pinpoints(grid_pinpoints: list, crop: int, key: str = "model.image_grid_pinpoints") -> list[list[int]]:
    """anyres resolutions must be [height, width] pairs of whole crops, or the crop grid is ill-defined."""
    out = []
    for g in grid_pinpoints:
        if not (isinstance(g, (list, tuple)) and len(g) == 2 and all(isinstance(v, int) and v > 0 and v % crop == 0 for v in g)):
            raise ValueError(f"config key '{key}': {g!r} is not a [height, width] pair of multiples of the crop size {crop}")
        out.append([int(g[0]), int(g[1])])
    return out


def llava_config(vision, text, grid_pinpoints: list | None, **kw):
    """LLaVA-1.5 config, or LLaVA-NeXT (anyres) when grid pinpoints are given -> (config, model class)."""
    if grid_pinpoints:
        return (LlavaNextConfig(vision_config=vision, text_config=text, image_grid_pinpoints=grid_pinpoints, **kw),
                LlavaNextForConditionalGeneration)
    return LlavaConfig(vision_config=vision, text_config=text, **kw), LlavaForConditionalGeneration


def build_tiny(cfg: TinyModelConfig, tokenizer, seed: int = 0, grid_pinpoints: list | None = None):
    """A tiny CLIP + tiny Llama LLaVA (or LLaVA-NeXT with grid pinpoints) with random weights, the stand-ins'
    shapes (models/standins.py), reproducible without touching global RNG. For tests and benchmarks: the tiny
    recipe composes the trained stand-ins instead."""
    grid_pinpoints = check_pinpoints(grid_pinpoints or [], cfg.image_size)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    n_tokens = (cfg.image_size // cfg.patch_size) ** 2
    config, cls = llava_config(standins.vision_config(cfg), standins.llm_config(cfg, tokenizer), grid_pinpoints,
                                image_token_index=image_id, vision_feature_layer=-1,
                                vision_feature_select_strategy="default", projector_hidden_act="gelu",
                                image_seq_length=n_tokens)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    standins.fix_positions(model.model.vision_tower.vision_model, cfg)
    model.model.vision_tower.vision_model.embeddings.position_embedding.weight.requires_grad_(True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def _compose(cfg: ModelConfig, dtype):
    """LLM + CLIP + a fresh projector: the starting point of pretraining from scratch."""
    # bad anyres resolutions fail on the tower's small config, before 7B of weights are read
    pinpoints = check_pinpoints(cfg.image_grid_pinpoints, CLIPVisionConfig.from_pretrained(cfg.vision_tower).image_size)
    tokenizer = load_tokenizer(cfg.llm)
    add_llava_tokens(tokenizer)
    llm = AutoModelForCausalLM.from_pretrained(cfg.llm, torch_dtype=dtype)
    llm.resize_token_embeddings(len(tokenizer))
    vision = CLIPVisionModel.from_pretrained(cfg.vision_tower, torch_dtype=dtype)
    crop = vision.config.image_size
    config, cls = llava_config(vision.config, llm.config, pinpoints,
                                image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                                vision_feature_layer=cfg.vision_feature_layer, vision_feature_select_strategy="default",
                                projector_hidden_act="gelu", image_seq_length=(crop // vision.config.patch_size) ** 2)
    with torch.device("meta"):
        llava = cls(config)
    llava.model.vision_tower = vision
    llava.model.language_model = llm.model
    llava.lm_head = llm.lm_head
    proj = type(llava.model.multi_modal_projector)(config)
    llava.model.multi_modal_projector = proj.to(dtype)
    clip_proc = CLIPImageProcessor.from_pretrained(cfg.vision_tower)
    if not pinpoints:
        return llava, tokenizer, clip_proc
    d = config.text_config.hidden_size
    # the row separator of the anyres merge; same init as transformers/LLaVA-NeXT
    llava.model.image_newline = nn.Parameter((torch.randn(d) / d ** 0.5).to(dtype))
    processor = LlavaNextImageProcessor(size=clip_proc.size, crop_size=clip_proc.crop_size,
                                        image_mean=clip_proc.image_mean, image_std=clip_proc.image_std,
                                        image_grid_pinpoints=pinpoints)
    return llava, tokenizer, processor


def _load_llava(path, dtype):
    """A llava-hf checkpoint of either family, chosen by its config.json (a local p-MoD export's
    marking undone: its routers are attached by checkpoint.load_exported)."""
    if (Path(path) / "config.json").is_file():
        from .hf_files import load_config_dict

        data, _ = load_config_dict(Path(path))
        if data.get("model_type") not in ("llava", "llava_next"):
            raise ValueError(f"{path} is a '{data.get('model_type')}' checkpoint; expected a llava-hf 'llava' or 'llava_next' one")
        config = (LlavaNextConfig if data["model_type"] == "llava_next" else LlavaConfig).from_dict(data)
    else:
        config = AutoConfig.from_pretrained(path)
    if config.model_type not in ("llava", "llava_next"):
        raise ValueError(f"{path} is a '{config.model_type}' checkpoint; expected a llava-hf 'llava' or 'llava_next' one")
    cls = LlavaNextForConditionalGeneration if config.model_type == "llava_next" else LlavaForConditionalGeneration
    model = cls.from_pretrained(path, config=config, torch_dtype=dtype)
    return model, AutoImageProcessor.from_pretrained(path, use_fast=False)


def load_components(cfg: ModelConfig, dtype=torch.float32, seed: int = 0):
    """-> (llava-hf model, tokenizer, image processor) as `cfg.source` says."""
    if cfg.source == "tiny":
        tok_dir = Path(cfg.tokenizer)
        if not (tok_dir / "tokenizer.json").is_file():
            raise FileNotFoundError(f"no tokenizer.json in {tok_dir}; run `python -m dualspeed.data synth` first")
        tokenizer = load_tokenizer(tok_dir)
        llava = build_tiny(cfg.tiny, tokenizer, seed, cfg.image_grid_pinpoints).to(dtype)
        return llava, tokenizer, tiny_image_processor(cfg.tiny.image_size, cfg.image_grid_pinpoints)
    if cfg.source == "compose":
        return _compose(cfg, dtype)
    path = cfg.path
    if Path(path).exists() and not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a llava-hf checkpoint (no config.json); pass a finished stage's hf/ dir")
    llava, processor = _load_llava(path, dtype)
    return llava, load_tokenizer(path), processor


def reinit_projector(llava, seed: int) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in llava.model.multi_modal_projector.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()
        if isinstance(llava, LlavaNextForConditionalGeneration):
            nl = llava.model.image_newline
            with torch.no_grad():
                nl.copy_(torch.randn(nl.shape) / nl.shape[0] ** 0.5)
