"""Spatially uniform subset: a regular lattice over the square token grid, same for every image."""
from __future__ import annotations

import math

import torch

from .base import VTPContext, VTPMethod, register


def lattice_indices(n: int, k: int) -> torch.Tensor:
    """k raster indices spread evenly over a sqrt(n) x sqrt(n) grid (1-D spread if n is not square)."""
    side = math.isqrt(n)
    if side * side != n:
        return torch.linspace(0, n - 1, k).round().long().unique()
    s = math.ceil(math.sqrt(k))  # s <= side because k <= n
    rows = torch.linspace(0, side - 1, s).round().long()
    cols = torch.linspace(0, side - 1, s).round().long()
    grid = (rows[:, None] * side + cols[None, :]).flatten()  # s*s >= k candidates, row-major
    pick = torch.linspace(0, grid.numel() - 1, k).round().long()
    return grid[pick]


@register("pool")
class PoolPrune(VTPMethod):
    options = {}  # takes none

    def select(self, feats: torch.Tensor, k: int, ctx: VTPContext) -> torch.Tensor:
        b, n, _ = feats.shape
        idx = lattice_indices(n, k).to(feats.device)
        if idx.numel() != k:
            raise RuntimeError(f"pool: lattice gave {idx.numel()} unique indices for k={k}, N={n}")
        return idx.expand(b, k)
