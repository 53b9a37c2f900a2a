"""What the in-LLM families (p-MoD, PyramidDrop) share: the decoder under an optional PEFT wrapper, the additive
mask over the keys a layer kept, and greedy decoding over the cache a family's own prefill left (the token loop
once, the family's decode step passed in)."""
from __future__ import annotations

from typing import Callable

import torch


def decoder(lm: torch.nn.Module) -> torch.nn.Module:
    """The LlamaModel-like decoder under an optional PEFT wrapper."""
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm


def additive_mask(key_valid: torch.Tensor, n_query: int, dtype) -> torch.Tensor:
    """[B, S] valid keys -> [B, 1, n_query, S] additive causal mask; the queries are the last n_query keys."""
    s = key_valid.shape[1]
    q_pos = torch.arange(s - n_query, s, device=key_valid.device)
    allowed = (torch.arange(s, device=key_valid.device)[None, :] <= q_pos[:, None])[None] & key_valid[:, None, :]
    return torch.zeros(allowed.shape, dtype=dtype, device=key_valid.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)[:, None]


def decode(model, logits: torch.Tensor, step: Callable[[torch.Tensor, int], torch.Tensor], max_new_tokens: int,
           eos_token_id, pad_token_id) -> torch.Tensor:
    """logits: [B, 1, V] at each sample's last prompt position; step(embedded new tokens [B, 1, D], step index)
    -> final-normed hidden [B, 1, D]. A finished sample emits pad. -> new ids [B, <=max_new]."""
    eos = sorted([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
    done = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    out = []
    for i in range(max_new_tokens):
        tok = logits[:, -1].argmax(-1)
        tok = torch.where(done, torch.full_like(tok, pad_token_id if pad_token_id is not None else 0), tok)
        out.append(tok)
        if eos:
            done |= torch.isin(tok, torch.tensor(eos, device=tok.device))
        if bool(done.all()) or i == max_new_tokens - 1:
            break
        logits = model.llava.lm_head(step(model.embed_tokens(tok[:, None]), i))
    return torch.stack(out, dim=1)
