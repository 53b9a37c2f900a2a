"""The CPU's broadcast causal mask is transformers' own mask, value for value, and only replaces it where it applies."""
import itertools

import pytest
import torch
from transformers import masking_utils
from transformers.masking_utils import (ALL_MASK_ATTENTION_FUNCTIONS, causal_mask_function, sdpa_mask,
                                        sliding_window_causal_mask_function)

from dualspeed.models import causal_mask


def _padding(kind, batch, length, gen):
    if kind == "none":
        return None
    am = torch.ones(batch, length, dtype=torch.bool)
    if kind == "right":
        am[0, length - 2:] = False
    elif kind == "left":
        am[-1, :2] = False
    elif kind == "random":
        am = torch.rand(batch, length, generator=gen) > 0.3
    return am


@pytest.mark.parametrize("skip", [True, False])
def test_broadcast_mask_equals_transformers(skip):
    gen = torch.Generator().manual_seed(0)
    cases = 0
    # query length, tokens already cached, a KV offset (sliding caches), a padding mask one short of the keys
    # (transformers pads it), each padding layout
    for batch, q, past, offset, short, kind in itertools.product(
            [1, 3], [1, 5, 17], [0, 4], [0, 2], [0, 1], ["none", "ones", "right", "left", "random"]):
        kv, pos = past + q, torch.arange(past + offset, past + offset + q)
        am = _padding(kind, batch, kv + offset - short, gen)
        ref = sdpa_mask(batch_size=batch, cache_position=pos, kv_length=kv, kv_offset=offset,
                        mask_function=causal_mask_function, attention_mask=am, allow_is_causal_skip=skip)
        got = causal_mask.broadcast_mask(batch, pos, kv, offset, am, None, skip)
        where = (batch, q, past, offset, short, kind)
        assert (ref is None) == (got is None), where
        if ref is not None:
            assert got.dtype == ref.dtype and got.shape == ref.shape and torch.equal(got, ref), where
            cases += 1
    assert cases > 100  # masks were built, not only skipped


def test_only_a_plain_causal_mask_of_cpu_tensors_takes_the_broadcast_path(monkeypatch):
    handed = []
    route = causal_mask._on_cpu(lambda **kw: handed.append(kw) or "transformers")
    monkeypatch.setattr(causal_mask, "broadcast_mask", lambda *a: "broadcast")
    pos, am = torch.arange(6), torch.ones(2, 6, dtype=torch.bool)
    assert route(batch_size=2, cache_position=pos, kv_length=6, attention_mask=am) == "broadcast"
    assert route(batch_size=2, cache_position=pos, kv_length=6) == "broadcast"
    others = [dict(cache_position=pos.to("meta")),                                      # not a CPU tensor
              dict(mask_function=sliding_window_causal_mask_function(3)),               # another mask function
              dict(attention_mask=am.long()),                                           # not a boolean mask
              dict(attention_mask=am[:1])]                                              # not the whole batch
    for kw in others:
        assert route(**{"batch_size": 2, "cache_position": pos, "kv_length": 6, "attention_mask": am, **kw}) == "transformers"
    assert len(handed) == len(others)


def test_install_wraps_transformers_builder_once_and_nothing_else(monkeypatch):
    monkeypatch.setitem(ALL_MASK_ATTENTION_FUNCTIONS, "sdpa", masking_utils.sdpa_mask_recent_torch)
    causal_mask.install()
    causal_mask.install()  # idempotent: one wrapper
    fn = ALL_MASK_ATTENTION_FUNCTIONS["sdpa"]
    assert getattr(fn, causal_mask._INSTALLED) is masking_utils.sdpa_mask_recent_torch
    causal_mask.uninstall()
    assert ALL_MASK_ATTENTION_FUNCTIONS["sdpa"] is masking_utils.sdpa_mask_recent_torch

    def someone_elses(**kw):
        return None

    monkeypatch.setitem(ALL_MASK_ATTENTION_FUNCTIONS, "sdpa", someone_elses)
    causal_mask.install()  # not the builder it mirrors: left alone
    assert ALL_MASK_ATTENTION_FUNCTIONS["sdpa"] is someone_elses
