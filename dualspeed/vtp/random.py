"""Uniformly random token subset: the weakest sensible baseline."""
from __future__ import annotations

import torch

from .base import VTPContext, VTPMethod, register


@register("random")
class RandomPrune(VTPMethod):
    options = {}  # takes none

    def select(self, feats: torch.Tensor, k: int, ctx: VTPContext) -> torch.Tensor:
        b, n, _ = feats.shape
        gen = ctx.generator
        device = gen.device if gen is not None else feats.device
        scores = torch.rand(b, n, generator=gen, device=device)
        return scores.argsort(dim=1)[:, :k].to(feats.device)
