"""Loading the LLM's tokenizer the way LLaVA does, and giving it the two tokens LLaVA-style training needs."""
from __future__ import annotations

from transformers import AutoTokenizer

from ..data.conversation import IMAGE_TOKEN


def load_tokenizer(path, **kwargs):
    """LLaVA loads the LLM's tokenizer with use_fast=False (llava/train/train.py:893): for Vicuna, which ships
    only tokenizer.model, that is the SentencePiece tokenizer itself rather than a converted fast copy, with the
    `legacy` flag of its own tokenizer_config.json. A tokenizer that ships only tokenizer.json (the tiny
    word-level one) has no slow class and loads its fast one."""
    return AutoTokenizer.from_pretrained(path, use_fast=False, **kwargs)


def add_llava_tokens(tokenizer) -> None:
    """<image> as one special token (llava-hf's convention; LLaVA itself splices at a -200 id it never embeds, so
    the vocabulary grows by one row here: docs/recipes.md), and a pad token: LLaVA's v1 recipe pads with <unk>."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
