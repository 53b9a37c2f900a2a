"""The CPU's broadcast causal mask is transformers' own mask, value for value, and only replaces it where it applies."""
import itertools

import pytest
import torch
from transformers.masking_utils import (ALL_MASK_ATTENTION_FUNCTIONS, causal_mask_function, sdpa_mask,
                                        sliding_window_causal_mask_function)

from dualspeed.models import causal_mask


def _padding(kind, batch, kv, gen):
    if kind == "none":
        return None
    am = torch.ones(batch, kv, dtype=torch.bool)
    if kind == "right":
        am[0, kv - 2:] = False
    elif kind == "left":
        am[-1, :2] = False
    elif kind == "random":
        am = torch.rand(batch, kv, generator=gen) > 0.3
    return am


@pytest.mark.parametrize("skip", [True, False])
def test_broadcast_mask_equals_transformers(skip):
    gen = torch.Generator().manual_seed(0)
    cases = 0
    for batch, q, past, kind in itertools.product([1, 3], [1, 5, 17], [0, 4], ["none", "ones", "right", "left", "random"]):
        kv, pos = past + q, torch.arange(past, past + q)
        am = _padding(kind, batch, kv, gen)
        ref = sdpa_mask(batch_size=batch, cache_position=pos, kv_length=kv, mask_function=causal_mask_function,
                        attention_mask=am, allow_is_causal_skip=skip)
        got = causal_mask.broadcast_mask(batch, pos, kv, 0, am, None, skip)
        assert (ref is None) == (got is None), (batch, q, past, kind)
        if ref is not None:
            assert got.dtype == ref.dtype and got.shape == ref.shape and torch.equal(got, ref), (batch, q, past, kind)
            cases += 1
    assert cases > 20  # masks were built, not only skipped


def test_install_routes_only_the_plain_causal_mask():
    causal_mask.uninstall()
    original = ALL_MASK_ATTENTION_FUNCTIONS["sdpa"]
    try:
        causal_mask.install()
        causal_mask.install()  # idempotent: one wrapper
        fn = ALL_MASK_ATTENTION_FUNCTIONS["sdpa"]
        assert fn is not original and getattr(fn, causal_mask._INSTALLED) is original
        pos, am = torch.arange(6), torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6], dtype=torch.bool)
        assert torch.equal(fn(batch_size=2, cache_position=pos, kv_length=6, attention_mask=am),
                           original(batch_size=2, cache_position=pos, kv_length=6, attention_mask=am))
        window = sliding_window_causal_mask_function(3)  # not the plain causal mask: transformers builds it
        assert torch.equal(fn(batch_size=2, cache_position=pos, kv_length=6, mask_function=window, attention_mask=am),
                           original(batch_size=2, cache_position=pos, kv_length=6, mask_function=window,
                                    attention_mask=am))
    finally:
        causal_mask.uninstall()
    assert ALL_MASK_ATTENTION_FUNCTIONS["sdpa"] is original
