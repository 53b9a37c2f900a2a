"""The conversation format: LLaVA's prompt templates, tokenised as LLaVA tokenises them, with answer-only labels,
and the same template as a chat template for llava-hf exports.

Tied to LLaVA's own code by golden files (tests/golden/llava, scripts/crosscheck): the prompt text is
`conv_vicuna_v1.get_prompt()` (llava/conversation.py), the ids are `tokenizer_image_token` of the whole
conversation (llava/mm_utils.py), and the labels are the spans `preprocess_v1` means to supervise
(llava/train/train.py): every answer as it is tokenised *in context*, and the </s> that ends it.
"""
from __future__ import annotations

import json

IMAGE_TOKEN = "<image>"
# conv_vicuna_v1's system prompt (LLaVA-1.5's `--version v1`); "human" is conv_llava_v1's, which it does not use
SYSTEM_PROMPT = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
ROLES = ("USER", "ASSISTANT")
IGNORE = -100


def _encode(tokenizer, text: str) -> list[int]:
    """LLaVA's tokenizer_image_token without the <s>: each piece between <image>s tokenised on its own (so a
    SentencePiece tokenizer gives it its leading "▁" as LLaVA's does), each <image> mapped to the image token id."""
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    ids: list[int] = []
    for j, piece in enumerate(text.split(IMAGE_TOKEN)):
        if j:
            ids.append(image_id)
        if piece:
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


def vicuna_v1_segments(conversations: list[dict], eos: str, for_generation: bool = False) -> list[tuple[str, bool]]:
    """conv_vicuna_v1's prompt as (text, supervised) pieces whose concatenation is its get_prompt():
    "<system> USER: <q> ASSISTANT: <a></s>USER: ..." with each answer and its </s> supervised. The space
    after "ASSISTANT:" goes with the answer, as the tokenizer merges it into the answer's first token."""
    if conversations and conversations[0].get("from") not in (None, "human"):
        conversations = conversations[1:]  # LLaVA skips a conversation's leading non-human turn
    turns = conversations[:-1] if for_generation else conversations
    segs: list[tuple[str, bool]] = [(SYSTEM_PROMPT + " ", False)]
    for t in range(0, len(turns), 2):
        segs.append((f"{ROLES[0]}: {turns[t]['value']} {ROLES[1]}:", False))
        if t + 1 < len(turns):
            segs.append((" " + turns[t + 1]["value"] + eos, True))
    return segs


def _label_spans(tokenizer, segments: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """Tokenise the whole text at once (its ids are LLaVA's), then label each supervised run by the token
    counts of the text up to its start and its end: what preprocess_v1's length arithmetic means, without its
    off-by-ones (where its arithmetic and the text disagree, LLaVA masks the whole sample as a "tokenization
    mismatch"). Runs start after "ASSISTANT:" and end on </s>, where SentencePiece always starts a new token,
    so a prefix of the text tokenises as a prefix of the whole."""
    runs: list[tuple[str, bool]] = []
    for text, supervised in segments:  # one run per change of flag: the only boundaries we tokenise at
        if runs and runs[-1][1] == supervised:
            runs[-1] = (runs[-1][0] + text, supervised)
        else:
            runs.append((text, supervised))
    ids = _encode(tokenizer, "".join(t for t, _ in runs))
    labels = [IGNORE] * len(ids)
    prefix, end = "", 0
    for text, supervised in runs[:-1] if runs and not runs[-1][1] else runs:
        prefix += text
        head = _encode(tokenizer, prefix)
        if ids[:len(head)] != head:
            raise ValueError(f"{type(tokenizer).__name__} tokenises the prompt up to {prefix[-30:]!r} differently "
                             "alone and in context; the answer spans cannot be located")
        start, end = end, len(head)
        if supervised:
            labels[start:end] = ids[start:end]
    return ids, labels


def build_prompt(tokenizer, conversations: list[dict], template: str, for_generation: bool = False,
                 plain_end: str = "newline"):
    """-> (input_ids, labels) with labels set on answer tokens (and their end token) only.

    vicuna_v1: "<s><system> USER: <q> ASSISTANT: <a></s>USER: ..." (LLaVA-1.5's SFT template, conv_vicuna_v1)
    plain:     "<s><image><caption>\n" (LLaVA's pretraining template: the human text is dropped; the caption
               ends in LLaVA's plain separator "\n", or in </s> with plain_end="eos")
    for_generation: drop the last answer and end on the assistant cue "ASSISTANT:".
    """
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = tokenizer.eos_token_id
    if template == "plain":
        prompt = _encode(tokenizer, IMAGE_TOKEN if IMAGE_TOKEN in conversations[0]["value"] else "")
        ids, labels = bos + prompt, [IGNORE] * (len(bos) + len(prompt))
        if not for_generation:
            if plain_end == "newline":  # tokenised with the caption, as LLaVA does: "\n" may merge with its end
                ans = _encode(tokenizer, conversations[1]["value"] + "\n")
            elif plain_end == "eos":
                ans = _encode(tokenizer, conversations[1]["value"]) + [eos]
            else:
                raise ValueError(f"unknown plain_end {plain_end!r}; expected newline or eos")
            ids, labels = ids + ans, labels + ans
        return ids, labels
    if template != "vicuna_v1":
        raise ValueError(f"unknown template {template!r}")
    ids, labels = _label_spans(tokenizer, vicuna_v1_segments(conversations, tokenizer.eos_token, for_generation))
    return bos + ids, [IGNORE] * len(bos) + labels


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
