"""The VTP plugin interface and its registry.

A plugin chooses which k of N visual tokens survive. It sees the projected features of a batch of
images (or crops) at once and returns sorted indices, so the caller can gather tokens while keeping
their original order (the LLM relies on that order for position information).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class VTPContext:
    """Optional side information a plugin may use.

    text_embeds: [B, T, D] embeddings of each sample's instruction (same space as the features).
    text_mask:   [B, T] bool, True where text_embeds is a real token.
    generator:   a torch.Generator for methods that draw random numbers, so runs are reproducible.
    """

    text_embeds: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    generator: torch.Generator | None = None


class VTPMethod(ABC):
    """Base class of a visual-token-pruning plugin."""

    name: str = ""
    needs_text: bool = False  # True if select() requires ctx.text_embeds

    @abstractmethod
    def select(self, feats: torch.Tensor, k: int, ctx: VTPContext) -> torch.Tensor:
        """feats: [B, N, D] -> LongTensor [B, k] of kept token indices, ascending per row."""

    def __call__(self, feats: torch.Tensor, k: int, ctx: VTPContext | None = None) -> torch.Tensor:
        if feats.dim() != 3:
            raise ValueError(f"VTP '{self.name}' expects features [B, N, D], got shape {tuple(feats.shape)}")
        n = feats.shape[1]
        if not 1 <= k <= n:
            raise ValueError(f"VTP '{self.name}': cannot keep k={k} of N={n} tokens (need 1 <= k <= N)")
        ctx = ctx or VTPContext()
        if self.needs_text and ctx.text_embeds is None:
            raise ValueError(f"VTP '{self.name}' needs the instruction embeddings (ctx.text_embeds)")
        if k == n:  # keeping everything is the identity, whatever the method
            return torch.arange(n, device=feats.device).expand(feats.shape[0], n)
        idx = self.select(feats, k, ctx)
        if idx.shape != (feats.shape[0], k):
            raise RuntimeError(f"VTP '{self.name}' returned shape {tuple(idx.shape)}, expected {(feats.shape[0], k)}")
        return idx.sort(dim=1).values


_REGISTRY: dict[str, Callable[[], VTPMethod]] = {}


def register(name: str):
    """Class decorator: make a VTPMethod available under `name`."""

    def deco(cls):
        if name in _REGISTRY:
            raise ValueError(f"VTP method '{name}' is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> VTPMethod:
    """Instantiate the method registered as `name`; unknown names list the known ones."""
    if name not in _REGISTRY:
        raise KeyError(
            f"unknown VTP method '{name}'; known methods: {', '.join(available())}. "
            "To add one, put a file in dualspeed/vtp/ that subclasses VTPMethod with @register('<name>') "
            "and import it in dualspeed/vtp/__init__.py"
        )
    return _REGISTRY[name]()


def keep_count(n_tokens: int, prune_ratio: float) -> int:
    """k = floor((1 - p) * N), at least one token (the paper's rule)."""
    if not 0.0 <= prune_ratio < 1.0:
        raise ValueError(f"prune ratio p must be in [0, 1), got {prune_ratio}")
    # round first so that e.g. (1 - 0.9) * 64 = 6.3999... floors to 6, not 5
    return max(1, int(round((1.0 - prune_ratio) * n_tokens, 6)))
