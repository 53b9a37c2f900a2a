"""What an export needs so that plain transformers and lmms-eval use it as they are: the chat template
that renders llava-hf messages into the harness's training prompt, a complete LlavaProcessor /
LlavaNextProcessor, and the marking that keeps a p-MoD export from loading as a dense model."""
from __future__ import annotations

import json
from pathlib import Path

from .data import IMAGE_TOKEN, SYSTEM_PROMPT

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
             "dualspeed_extra.safetensors; load it with dualspeed.checkpoint.load_exported, not as a dense LLaVA.")


def chat_template() -> str:
    """vicuna_v1 as `data.build_prompt` writes it, for llava-hf messages: a user turn's content is a
    string or a list of {"type": "image"} / {"type": "text", "text": ...} parts, an image part becoming
    "<image>\\n" as in LLaVA's data. An optional leading system message replaces the system prompt.
    The system prompt is passed as a JSON string literal (valid Jinja), so its apostrophe is safe."""
    system = json.dumps(SYSTEM_PROMPT)
    image = json.dumps(IMAGE_TOKEN + "\n")
    return (
        "{% macro render(content) %}{% if content is string %}{{ content }}{% else %}"
        "{% for part in content %}{% if part['type'] == 'image' %}{{ " + image + " }}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}{% endmacro %}"
        "{% if messages[0]['role'] == 'system' %}{% set system = render(messages[0]['content']) %}"
        "{% set messages = messages[1:] %}{% else %}{% set system = " + system + " %}{% endif %}"
        "{% for m in messages %}{% if m['role'] == 'user' %}"
        "{% if loop.first %}{{ system }} {% endif %}USER: {{ render(m['content']) }} ASSISTANT:"
        "{% else %} {{ render(m['content']) }}{{ eos_token }}{% endif %}{% endfor %}"
    )


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


def prepare_tokenizer(tokenizer) -> None:
    """The template on the tokenizer too, and no token_type_ids: Llava*.generate rejects them."""
    tokenizer.chat_template = chat_template()
    tokenizer.model_input_names = [n for n in tokenizer.model_input_names if n != "token_type_ids"]
    # saved into tokenizer_config.json, so a reload keeps it
    tokenizer.init_kwargs["model_input_names"] = tokenizer.model_input_names


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
