"""What an export needs so that plain transformers and lmms-eval use it as they are: a complete
LlavaProcessor / LlavaNextProcessor carrying the training prompt's chat template (data/conversation.py),
and the marking that keeps a p-MoD export from loading as a dense model."""
from __future__ import annotations

import json
from pathlib import Path

from ..data.conversation import IMAGE_TOKEN, chat_template

# A p-MoD export is a llava-hf directory whose LLM needs routers transformers does not have. Its
# config.json gets a model_type transformers does not know, so AutoConfig / AutoModel* / pipelines
# refuse it (and an explicit Llava*ForConditionalGeneration warns of the type mismatch); the harness
# maps it back to the base type it stores beside it and attaches the routers.
PMOD_MODEL_TYPE = {"llava": "dualspeed_pmod_llava", "llava_next": "dualspeed_pmod_llava_next"}
PMOD_ARCH = {"llava": "DualSpeedPModLlavaForConditionalGeneration",
             "llava_next": "DualSpeedPModLlavaNextForConditionalGeneration"}
BASE_TYPE_KEY = "dualspeed_base_model_type"
PMOD_NOTE_KEY = "dualspeed_note"
PMOD_NOTE = ("p-MoD checkpoint: the LLM's layers route vision tokens through routers stored in "
             "dualspeed_extra.safetensors; load it with dualspeed.models.checkpoint.load_exported, not as a dense LLaVA.")


def processor_for_export(llava, tokenizer, image_processor):
    """The full processor (image processor + tokenizer + how many tokens an image becomes), so that
    AutoProcessor.from_pretrained on the export expands <image> exactly as the model needs."""
    from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor, LlavaProcessor

    vc = llava.config.vision_config
    emb = llava.model.vision_tower.vision_model.embeddings
    # CLIP's class token: counted by the processor, then dropped by the "default" select strategy
    extra = int(emb.num_positions - emb.num_patches) if hasattr(emb, "num_patches") else 1
    cls = LlavaNextProcessor if isinstance(llava, LlavaNextForConditionalGeneration) else LlavaProcessor
    return cls(image_processor=image_processor, tokenizer=tokenizer, patch_size=vc.patch_size,
               vision_feature_select_strategy=llava.config.vision_feature_select_strategy,
               num_additional_image_tokens=extra, image_token=IMAGE_TOKEN, chat_template=chat_template())


def mark_pmod(out: Path) -> None:
    """Give a p-MoD export's config.json a model type of its own (see PMOD_MODEL_TYPE)."""
    path = out / "config.json"
    cfg = json.loads(path.read_text())
    base = cfg["model_type"]
    cfg.update({"model_type": PMOD_MODEL_TYPE[base], "architectures": [PMOD_ARCH[base]],
                BASE_TYPE_KEY: base, PMOD_NOTE_KEY: PMOD_NOTE})
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def load_config_dict(path: Path) -> tuple[dict, bool]:
    """config.json with a p-MoD marking undone -> (config dict of a llava-hf type, whether it was p-MoD)."""
    cfg = json.loads((Path(path) / "config.json").read_text())
    if BASE_TYPE_KEY not in cfg:
        return cfg, False
    base = cfg.pop(BASE_TYPE_KEY)
    cfg.pop(PMOD_NOTE_KEY, None)
    cfg["model_type"] = base
    cfg["architectures"] = ["LlavaNextForConditionalGeneration" if base == "llava_next"
                            else "LlavaForConditionalGeneration"]
    return cfg, True
