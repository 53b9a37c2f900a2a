"""How fast mode prunes: a VTP plugin and its ratio p."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import vtp


@dataclass
class Prune:
    """How fast mode prunes: a VTP plugin ('name' or 'name:key=value+...') and its ratio p."""

    method: str
    ratio: float
    seed: int | None = None  # inference: a generator of its own for methods that draw random numbers

    def __post_init__(self):
        self.plugin = vtp.get(self.method)
        self.signals = self.plugin.required_signals()  # an unknown signal fails here, before any step
        # training leaves it None: the global RNG is seeded and restored with every checkpoint
        self.generator = torch.Generator().manual_seed(self.seed) if self.seed is not None else None
