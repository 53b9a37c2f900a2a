"""bf16 on the CPU as the real recipes train on a GPU: autocast over fp32 master weights, with attention kept in fp32.

The CPU's fused attention kernel is slower in bf16 than in fp32 at the tiny model's shapes (forward and backward of
32 x 4 heads x 104 tokens x 32: 34 ms in bf16 against 12 ms in fp32, one thread, 2026-12-06; the math kernel in bf16
16 ms), so under autocast it would undo what the bf16 matmuls gain. Transformers looks its attention function up by
name at every call; `fp32_attention` wraps that entry so that, on the CPU under bf16 autocast only, q, k and v go in
as fp32 and the output comes back in the autocast dtype. On a GPU, or without autocast, it calls the original.
"""
from __future__ import annotations

import contextlib

import torch

_WRAPPED = "_dualspeed_fp32_on_cpu"


def _fp32_on_cpu(fn):
    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        if query.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
            return fn(module, query, key, value, attention_mask, *args, **kwargs)
        low = torch.get_autocast_dtype("cpu")
        with torch.autocast("cpu", enabled=False):
            mask = attention_mask if attention_mask is None or attention_mask.dtype == torch.bool else attention_mask.float()
            out, weights = fn(module, query.float(), key.float(), value.float(), mask, *args, **kwargs)
        return out.to(low), weights

    setattr(attention, _WRAPPED, True)
    return attention


def fp32_attention() -> None:
    """Wrap transformers' SDPA entry for this process (idempotent)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    fn = ALL_ATTENTION_FUNCTIONS["sdpa"]
    if not getattr(fn, _WRAPPED, False):
        ALL_ATTENTION_FUNCTIONS["sdpa"] = _fp32_on_cpu(fn)


def autocast(enabled: bool):
    """The stand-ins' loops: bf16 autocast on the CPU when enabled (a GPU run of them is not a recipe)."""
    if not enabled:
        return contextlib.nullcontext()
    fp32_attention()
    return torch.autocast("cpu", dtype=torch.bfloat16)
