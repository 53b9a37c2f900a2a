"""LoRA's CPU dropout: the Bernoulli masks of nn.Dropout, drawn four elements to a 64-bit random number."""
import math

import pytest
import torch
from torch import nn

from dualspeed.train.lora_dropout import BitsDropout, install


def test_drops_each_element_with_probability_p_and_keeps_the_mean():
    torch.manual_seed(0)
    d = BitsDropout(0.05).train()
    x = torch.ones(400, 1000)
    y = d(x)
    dropped = (y == 0).float().mean().item()
    n = x.numel()
    assert abs(dropped - 0.05) < 4 * math.sqrt(0.05 * 0.95 / n)  # a binomial 4-sigma band
    assert abs(y.mean().item() - 1.0) < 4 * math.sqrt(0.05 / 0.95 / n)
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, d.scale))


def test_masks_differ_across_calls_and_elements_and_follow_the_seed():
    d = BitsDropout(0.5).train()
    x = torch.ones(64, 64)
    torch.manual_seed(1)
    a, b = d(x), d(x)
    torch.manual_seed(1)
    assert torch.equal(a, d(x))
    assert not torch.equal(a, b)
    # neighbouring elements share a 64-bit draw but not their bits: no correlation between them
    m = (a != 0).float().flatten()
    assert abs(torch.corrcoef(torch.stack([m[:-1], m[1:]]))[0, 1].item()) < 0.05


def test_gradient_is_the_mask_and_eval_is_the_identity():
    torch.manual_seed(2)
    d = BitsDropout(0.2).train()
    x = torch.randn(8, 16, requires_grad=True)
    y = d(x)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.where(y != 0, torch.full_like(x, d.scale), torch.zeros_like(x)))
    d.eval()
    assert torch.equal(d(x), x)


def test_rejects_a_probability_outside_zero_one():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        BitsDropout(1.0)


def test_install_replaces_peft_dropouts_only():
    from peft import LoraConfig, get_peft_model

    base = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Dropout(0.3))
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, lora_dropout=0.05, target_modules=["0", "2"]))
    assert install(model) == 2
    kinds = [type(m).__name__ for m in model.modules()]
    assert kinds.count("BitsDropout") == 2
    assert kinds.count("Dropout") == 1  # the model's own dropout is not LoRA's: left alone
