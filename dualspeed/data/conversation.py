"""The conversation format: LLaVA's prompt templates, tokenisation with answer-only labels, and the same
template as a chat template for llava-hf exports."""
from __future__ import annotations

import json

IMAGE_TOKEN = "<image>"
SYSTEM_PROMPT = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")
IGNORE = -100


def _encode(tokenizer, text: str) -> list[int]:
    """Tokenise text, mapping each <image> to the image token id whatever the tokenizer does with it."""
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    ids: list[int] = []
    for j, piece in enumerate(text.split(IMAGE_TOKEN)):
        if j:
            ids.append(image_id)
        if piece.strip():
            ids += tokenizer(piece, add_special_tokens=False).input_ids
    return ids


def image_first(conversations: list[dict]) -> list[dict]:
    """LLaVA's placement: <image> taken out of the turn that holds it and put first, then a newline."""
    out = []
    for turn in conversations:
        v = turn["value"]
        if IMAGE_TOKEN in v:
            v = (IMAGE_TOKEN + "\n" + v.replace(IMAGE_TOKEN, "").strip()).strip()
        out.append({**turn, "value": v})
    return out


def build_prompt(tokenizer, conversations: list[dict], template: str, for_generation: bool = False,
                 plain_end: str = "newline"):
    """-> (input_ids, labels) with labels set on answer tokens (and their end token) only.

    vicuna_v1: "<system> USER: <q> ASSISTANT: <a></s>USER: ..." (LLaVA-1.5's SFT template)
    plain:     "<image><caption>\n" (LLaVA's pretraining template: the human text is dropped; the caption
               ends in LLaVA's plain separator "\n", or in </s> with plain_end="eos")
    for_generation: drop the last answer and end on the assistant cue.
    """
    ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    labels = [IGNORE] * len(ids)
    eos = tokenizer.eos_token_id
    turns = conversations[:-1] if for_generation else conversations
    if template == "plain":
        prompt = _encode(tokenizer, IMAGE_TOKEN if IMAGE_TOKEN in conversations[0]["value"] else "")
        ids += prompt
        labels += [IGNORE] * len(prompt)
        if not for_generation:
            if plain_end == "newline":  # tokenised with the caption, as LLaVA does: "\n" may merge with its end
                ans = _encode(tokenizer, conversations[1]["value"] + "\n")
            elif plain_end == "eos":
                ans = _encode(tokenizer, conversations[1]["value"]) + [eos]
            else:
                raise ValueError(f"unknown plain_end {plain_end!r}; expected newline or eos")
            ids += ans
            labels += ans
        return ids, labels
    if template != "vicuna_v1":
        raise ValueError(f"unknown template {template!r}")
    for t in range(0, len(turns), 2):
        head = (SYSTEM_PROMPT + " " if t == 0 else "") + "USER: " + turns[t]["value"] + " ASSISTANT:"
        p = _encode(tokenizer, head)
        ids += p
        labels += [IGNORE] * len(p)
        if t + 1 < len(turns):
            a = _encode(tokenizer, " " + turns[t + 1]["value"]) + [eos]
            ids += a
            labels += a
    return ids, labels


def chat_template() -> str:
    """vicuna_v1 as `build_prompt` writes it, for llava-hf messages: a user turn's content is a
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


def prepare_tokenizer(tokenizer) -> None:
    """The template on the tokenizer too, and no token_type_ids: Llava*.generate rejects them."""
    tokenizer.chat_template = chat_template()
    tokenizer.model_input_names = [n for n in tokenizer.model_input_names if n != "token_type_ids"]
    # saved into tokenizer_config.json, so a reload keeps it
    tokenizer.init_kwargs["model_input_names"] = tokenizer.model_input_names
