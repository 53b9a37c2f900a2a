"""Word-level tokenizers built offline from the text a tiny model will see: every word of it is in the vocabulary.

Two views of one vocabulary (the same ids): the LLM's, which starts a text with <s> and carries the chat template
of the training prompt, and the tiny CLIP's, which also ends it with </s>, the token whose state CLIP's text tower
pools. </s> is not id 2: transformers' CLIP reads id 2 as the legacy "pool at the highest id" convention.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .conversation import IMAGE_TOKEN, SYSTEM_PROMPT, prepare_tokenizer

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", IMAGE_TOKEN]
TEMPLATE_TEXT = [SYSTEM_PROMPT, "USER : ASSISTANT :"]  # the prompt's own words, whatever the data


def words_of(texts: Iterable[str]) -> list[str]:
    """The sorted vocabulary of some texts, as the tokenizer splits them (lowercased, punctuation apart)."""
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.Whitespace()
    words: set[str] = set()
    for t in list(TEMPLATE_TEXT) + list(texts):
        words.update(w for w, _ in pre.pre_tokenize_str(t.replace(IMAGE_TOKEN, " ").lower()))
    return sorted(words - {s.lower() for s in SPECIALS})


def build(texts: Iterable[str], llm_dir: Path, clip_dir: Path | None = None) -> int:
    """Write the LLM's tokenizer to llm_dir (and the CLIP view to clip_dir); returns the vocabulary size."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + words_of(texts))}
    views = [(llm_dir, "<s> $A")] + ([(clip_dir, "<s> $A </s>")] if clip_dir else [])
    for out, single in views:
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.post_processor = processors.TemplateProcessing(
            single=single, special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                       pad_token="<pad>", additional_special_tokens=[IMAGE_TOKEN])
        if out == llm_dir:
            prepare_tokenizer(fast)  # the llava-hf chat template of the training prompt, no token_type_ids
        fast.save_pretrained(out)
    return len(vocab)


def unknown_words(tokenizer, texts: Iterable[str]) -> dict[str, int]:
    """Words of the texts the tokenizer maps to <unk>, with their counts (empty: every word is known)."""
    out: dict[str, int] = {}
    unk = tokenizer.unk_token_id
    for t in texts:
        t = t.replace(IMAGE_TOKEN, " ")
        enc = tokenizer(t, add_special_tokens=False, return_offsets_mapping=True)
        for tid, (a, b) in zip(enc.input_ids, enc.offset_mapping):
            if tid == unk:
                out[t[a:b]] = out.get(t[a:b], 0) + 1
    return out
