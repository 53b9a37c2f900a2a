"""Transformers' causal attention mask, built on the CPU by broadcasting instead of by vmap.

For SDPA, transformers (4.5x) builds the 4D boolean mask of every forward by vmapping a Python mask function
over batch, head, query and key indices. On a GPU that is a few launches; on a CPU it is Python dispatch on every
call: 4.7% of the tiny recipe's whole SFT loop in a profile (py-spy, 300 steps, 2026-12-06), and once per
generated token in evaluation. The plain causal mask with padding is `kv <= q` and the padding row, which
broadcasting builds in two ops. Same mask, same dtype and shape, same `None` where SDPA's `is_causal` path
applies, so the attention (and every run) is bit-for-bit what it was; `tests/test_causal_mask.py` compares the
two builders. Only what `create_causal_mask` hands the builder for a plain causal mask on CPU tensors (a boolean
padding mask over the whole batch) takes the broadcast path; any other mask function (sliding windows, packing,
or-/and-masks), mask or device goes to transformers' own builder, and on a transformers whose builder is not the
one this mirrors (`sdpa_mask_recent_torch`, torch >= 2.6) nothing is replaced.
"""
from __future__ import annotations

import torch
from transformers import masking_utils
from transformers.masking_utils import (ALL_MASK_ATTENTION_FUNCTIONS, _ignore_causal_mask_sdpa, causal_mask_function,
                                        prepare_padding_mask)

_INSTALLED = "_dualspeed_broadcast_mask"


def broadcast_mask(batch_size: int, cache_position: torch.Tensor, kv_length: int, kv_offset: int = 0,
                   attention_mask: torch.Tensor | None = None, local_size: int | None = None,
                   allow_is_causal_skip: bool = True) -> torch.Tensor | None:
    """transformers' sdpa_mask for `causal_mask_function`: (batch, 1, q, kv) booleans, or None for is_causal."""
    q_length = cache_position.shape[0]
    padding_mask = prepare_padding_mask(attention_mask, kv_length, kv_offset, _slice=False)
    if allow_is_causal_skip and _ignore_causal_mask_sdpa(padding_mask, q_length, kv_length, kv_offset, local_size):
        return None
    kv = torch.arange(kv_length, device=cache_position.device) + kv_offset
    mask = (kv[None, :] <= cache_position[:, None])[None, None].expand(batch_size, 1, q_length, kv_length)
    if padding_mask is not None:
        return mask & padding_mask[:, kv][:, None, None, :]
    return mask  # broadcast over the batch, as transformers' own is


def _on_cpu(original):
    def sdpa_mask(batch_size, cache_position, kv_length, kv_offset=0, mask_function=causal_mask_function,
                  attention_mask=None, local_size=None, allow_is_causal_skip=True, **kwargs):
        if (mask_function is causal_mask_function and cache_position.device.type == "cpu"
                and (attention_mask is None or (attention_mask.dtype == torch.bool
                                                and attention_mask.shape[0] == batch_size))):
            return broadcast_mask(batch_size, cache_position, kv_length, kv_offset, attention_mask, local_size,
                                  allow_is_causal_skip)
        return original(batch_size=batch_size, cache_position=cache_position, kv_length=kv_length,
                        kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask,
                        local_size=local_size, allow_is_causal_skip=allow_is_causal_skip, **kwargs)

    setattr(sdpa_mask, _INSTALLED, original)
    return sdpa_mask


def install() -> None:
    """Build SDPA's causal masks by broadcasting on the CPU, in this process (idempotent)."""
    fn = ALL_MASK_ATTENTION_FUNCTIONS["sdpa"]
    if fn is getattr(masking_utils, "sdpa_mask_recent_torch", None):
        ALL_MASK_ATTENTION_FUNCTIONS["sdpa"] = _on_cpu(fn)


def uninstall() -> None:
    """Back to transformers' own builder (the benchmark's side-by-side comparison)."""
    fn = ALL_MASK_ATTENTION_FUNCTIONS["sdpa"]
    if hasattr(fn, _INSTALLED):
        ALL_MASK_ATTENTION_FUNCTIONS["sdpa"] = getattr(fn, _INSTALLED)
