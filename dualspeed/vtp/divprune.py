"""DivPrune: greedy max-min diversity selection on cosine distance, batched over images.

Precision (`divprune:precision=native|fp32`):
  native  the reference's arithmetic (DualSpeed's llava_arch.py, DivPrune): norms, cosine similarities and
          distances in the features' own dtype, bf16 in the real recipes; the default.
  fp32    the same steps on the features upcast to fp32. In bf16 the distances are coarse (an ulp of 1 - cos
          near 0 is 2^-9), so many near-ties break differently: on identical bf16 features the two keep
          different sets (docs/recipes.md). With fp32 features, as in the tiny recipe, both are the same.
"""
from __future__ import annotations

import torch

from .base import Option, VTPContext, VTPMethod, register

PRECISIONS = ("native", "fp32")


def cosine_distance(feats: torch.Tensor, precision: str = "native") -> torch.Tensor:
    """[B, N, D] -> [B, N, N] of 1 - cos, op for op as the reference: x / ||x||, then x x^T, then 1 - that, in the
    features' dtype (native) or in fp32. One mm per image, as the reference: a batched matmul may round differently.
    Not clamped at 0: in bf16 a near-duplicate's 1 - cos can be slightly negative, and the reference keeps it so."""
    if precision not in PRECISIONS:
        raise ValueError(f"DivPrune precision must be one of {PRECISIONS}, got {precision!r}")
    x = feats.float() if precision == "fp32" else feats
    tiny = torch.finfo(x.dtype).tiny  # guards an all-zero token only (the reference divides by 0); other norms pass as is
    unit = [xi / xi.norm(dim=1, keepdim=True).clamp_min(tiny) for xi in x]
    return torch.stack([1.0 - torch.mm(u, u.t()) for u in unit])


@register("divprune")
class DivPrune(VTPMethod):
    """Max-min diversity (MMDP) greedy selection, all images of the batch in lock-step.

    Step 0 picks the token whose nearest neighbour is farthest; each later step picks the
    unselected token whose distance to the selected set is largest. Ties go to the lowest index.
    The running min-distance is updated incrementally, so a batch costs O(k * N) after the
    distance matrices (one mm per image, as the reference), and the greedy steps run for all images at once.
    """

    options = {"precision": Option("native (the features' dtype, as the reference) or fp32",
                                   lambda v: v in PRECISIONS)}

    def __init__(self, precision: str = "native"):
        self.precision = precision

    def describe(self) -> dict:
        return {**super().describe(), "precision": self.precision}

    def select(self, feats: torch.Tensor, k: int, ctx: VTPContext) -> torch.Tensor:
        b, n, _ = feats.shape
        dist = cosine_distance(feats, self.precision)  # [B, N, N]
        rows = torch.arange(b, device=feats.device)
        eye = torch.eye(n, dtype=torch.bool, device=feats.device)
        # column minima as the reference's min(dim=0); argmax returns the first maximum -> lowest index on ties
        nn_dist = dist.masked_fill(eye, float("inf")).amin(dim=1)  # [B, N] distance to nearest other token
        first = nn_dist.argmax(dim=1)
        chosen = torch.empty(b, k, dtype=torch.long, device=feats.device)
        chosen[:, 0] = first
        taken = torch.zeros(b, n, dtype=torch.bool, device=feats.device)
        taken[rows, first] = True
        min_dist = dist[rows, first]  # [B, N] distance of every token to the selected set
        for i in range(1, k):
            score = min_dist.masked_fill(taken, float("-inf"))  # -inf as the reference: distances may be < 0
            nxt = score.argmax(dim=1)
            chosen[:, i] = nxt
            taken[rows, nxt] = True
            min_dist = torch.minimum(min_dist, dist[rows, nxt])
        return chosen
