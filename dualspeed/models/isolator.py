"""The mode isolator: a learnable soft prompt that marks fast-mode (pruned) visual sequences."""
from __future__ import annotations

import torch
from torch import nn


class ModeIsolator(nn.Module):
    """A learnable soft prompt M in R^{l x d}, prepended to the pruned visual tokens in fast mode.

    init "linear": U(-1/sqrt(d), 1/sqrt(d)), what the reference gets from the weight of a bias-free
    nn.Linear(d, l) (PyTorch's default init); "normal": N(0, 0.02^2).
    """

    def __init__(self, length: int, dim: int, init: str = "linear", init_std: float = 0.02):
        super().__init__()
        if length < 1:
            raise ValueError(f"isolator length must be >= 1, got {length}")
        if init == "linear":
            bound = 1.0 / dim ** 0.5
            prompt = torch.empty(length, dim).uniform_(-bound, bound)
        elif init == "normal":
            prompt = torch.randn(length, dim) * init_std
        else:
            raise ValueError(f"unknown isolator init {init!r}; expected linear or normal")
        self.prompt = nn.Parameter(prompt)

    def forward(self, visual: torch.Tensor) -> torch.Tensor:
        # visual: [B, k, D] -> [B, l + k, D]
        prefix = self.prompt.to(visual.dtype).unsqueeze(0).expand(visual.shape[0], -1, -1)
        return torch.cat([prefix, visual], dim=1)
