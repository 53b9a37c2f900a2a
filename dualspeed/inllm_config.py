"""The in-LLM families' run settings (p-MoD, PyramidDrop), part of the run config (config.py), each checked once."""
from __future__ import annotations

from dataclasses import dataclass, field

from .typed_merge import ConfigError


@dataclass
class PModConfig:
    """p-MoD (the comparison row): Mixture-of-Depths over the vision tokens in the LLM's layers."""

    enabled: bool = False
    dense_above: float = 0.85  # PRD: layers whose raw ratio exceeds this stay dense
    floor: float = 0.15  # PRD: the lowest keep ratio of a MoD layer
    alpha: float = 0.2  # TanhNorm: w~ = alpha * tanh(s) + beta
    beta: float = 1.0


@dataclass
class PDropConfig:
    """PyramidDrop (the third family): visual tokens dropped in stages inside the LLM, ranked by attention."""

    enabled: bool = False
    # drop after these many layers, strictly increasing in 1..L-1 (LLaVA-1.5-7B: 8, 16, 24 of 32)
    layers: list = field(default_factory=lambda: [8, 16, 24])
    lam: float = 0.5  # each stage keeps lam of the previous stage's visual tokens
    # the ranking finds its queries by place and rebuilds right-padded sequences, as the reference requires
    padding_side: str = "right"


def check_pdrop(pd: dict, n_layers: int | None = None) -> None:
    """PyramidDrop's settings, checked once for the run config and the plan: boundaries strictly increasing in
    1..L-1 (L known for the tiny LLM; a loaded LLM is checked when the model is built), lam in (0, 1], right
    padding."""
    layers, lam = pd.get("layers", [8, 16, 24]), pd.get("lam", 0.5)
    top = f"{n_layers - 1}" if n_layers else "L-1"
    if (not isinstance(layers, list) or not layers or any(not isinstance(x, int) or isinstance(x, bool) for x in layers)
            or any(x < 1 or (n_layers and x > n_layers - 1) for x in layers) or layers != sorted(set(layers))):
        raise ConfigError(f"config key 'pdrop.layers' must be strictly increasing layer counts, each in 1..{top} "
                          f"(got {layers!r})")
    if not (isinstance(lam, (int, float)) and 0.0 < lam <= 1.0):
        raise ConfigError(f"config key 'pdrop.lam' must be in (0, 1] (got {lam!r})")
    if pd.get("padding_side", "right") != "right":
        raise ConfigError(f"config key 'pdrop.padding_side' must be 'right': PyramidDrop finds its queries by place and "
                          f"rebuilds right-padded sequences (got {pd.get('padding_side')!r})")
