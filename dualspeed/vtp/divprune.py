"""DivPrune: greedy max-min diversity selection on cosine distance, batched over images."""
from __future__ import annotations

import torch

from .base import VTPContext, VTPMethod, register


def cosine_distance(feats: torch.Tensor) -> torch.Tensor:
    """[B, N, D] -> [B, N, N] of 1 - cos, computed in at least fp32."""
    x = feats if feats.dtype in (torch.float32, torch.float64) else feats.float()
    x = torch.nn.functional.normalize(x, dim=-1)
    return (1.0 - x @ x.transpose(1, 2)).clamp_min_(0.0)


@register("divprune")
class DivPrune(VTPMethod):
    """Max-min diversity (MMDP) greedy selection, all images of the batch in lock-step.

    Step 0 picks the token whose nearest neighbour is farthest; each later step picks the
    unselected token whose distance to the selected set is largest. Ties go to the lowest index.
    The running min-distance is updated incrementally, so a batch costs O(k * N) after the
    distance matrix, with no Python loop over images.
    """

    options = {}  # takes none

    def select(self, feats: torch.Tensor, k: int, ctx: VTPContext) -> torch.Tensor:
        b, n, _ = feats.shape
        dist = cosine_distance(feats)  # [B, N, N]
        rows = torch.arange(b, device=feats.device)
        eye = torch.eye(n, dtype=torch.bool, device=feats.device)
        nn_dist = dist.masked_fill(eye, float("inf")).amin(dim=1)  # [B, N] distance to nearest other token
        first = nn_dist.argmax(dim=1)  # argmax returns the first maximum -> lowest index on ties
        chosen = torch.empty(b, k, dtype=torch.long, device=feats.device)
        chosen[:, 0] = first
        taken = torch.zeros(b, n, dtype=torch.bool, device=feats.device)
        taken[rows, first] = True
        min_dist = dist[rows, first]  # [B, N] distance of every token to the selected set
        for i in range(1, k):
            score = min_dist.masked_fill(taken, -1.0)
            nxt = score.argmax(dim=1)
            chosen[:, i] = nxt
            taken[rows, nxt] = True
            min_dist = torch.minimum(min_dist, dist[rows, nxt])
        return chosen
