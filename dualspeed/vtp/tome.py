"""ToMe-style merging: bipartite soft matching repeated until k tokens remain, batched over crops.

One round (Bolya et al., ICLR 2023): the current tokens alternate between sets A (even positions)
and B (odd); every A token finds its most cosine-similar B token; the r most similar A tokens are
merged into their B partners by size-weighted average, r = min(tokens - k, |A|). Rounds repeat on
the result, whose tokens stay in the order of the original patch each started from (a B token keeps
its place when it absorbs others), so the alternate split keeps pairing spatial neighbours.

Size-weighted averages of averages are plain means of the original tokens, so only the grouping is
tracked and the output is each group's mean. Similarity is taken between the group sums, which have
the same direction as the means. Ties go to the lower B index, and to the lower A index among equally
similar A tokens.
"""
from __future__ import annotations

import torch

from .base import MergeMethod, Reduced, VTPContext, group_weights, register


def bipartite_round(sums: torch.Tensor, rep: torch.Tensor, r: int):
    """sums [B, n, D] group sums in order, rep [B, n] their original index; merge r A tokens into B.

    -> (new sums, new rep, slot [B, n]: each old token's position in the new sequence)."""
    b, n, d = sums.shape
    dev = sums.device
    a_pos, b_pos = torch.arange(0, n, 2, device=dev), torch.arange(1, n, 2, device=dev)
    xn = torch.nn.functional.normalize(sums, dim=-1)
    sim = xn[:, a_pos] @ xn[:, b_pos].transpose(1, 2)  # [B, nA, nB]
    dst = sim.argmax(dim=2)  # first maximum: lower B index on ties
    score = sim.gather(2, dst.unsqueeze(-1)).squeeze(-1)
    order = score.argsort(dim=1, descending=True, stable=True)  # equal scores: lower A index first
    merged, kept = order[:, :r], order[:, r:].sort(dim=1).values
    b_sums = sums[:, b_pos].scatter_add(1, dst.gather(1, merged).unsqueeze(-1).expand(-1, -1, d),
                                       sums[:, a_pos].gather(1, merged.unsqueeze(-1).expand(-1, -1, d)))
    keep_pos = a_pos[kept]  # [B, nA - r] positions of the unmerged A tokens
    new_sums = torch.cat([sums.gather(1, keep_pos.unsqueeze(-1).expand(-1, -1, d)), b_sums], dim=1)
    new_rep = torch.cat([rep.gather(1, keep_pos), rep[:, b_pos]], dim=1)
    resort = new_rep.argsort(dim=1)  # back to original-patch order (reps are distinct)
    new_sums = new_sums.gather(1, resort.unsqueeze(-1).expand(-1, -1, d))
    new_rep = new_rep.gather(1, resort)
    where = resort.argsort(dim=1)  # concatenated position -> new position
    slot = torch.empty(b, n, dtype=torch.long, device=dev)
    m = keep_pos.shape[1]
    slot.scatter_(1, keep_pos, where[:, :m])
    slot[:, b_pos] = where[:, m:]
    slot.scatter_(1, a_pos[merged], slot[:, b_pos].gather(1, dst.gather(1, merged)))
    return new_sums, new_rep, slot


@register("tome")
class ToMe(MergeMethod):
    def merge(self, feats: torch.Tensor, k: int, ctx: VTPContext) -> Reduced:
        b, n, _ = feats.shape
        dev = feats.device
        sums = feats if feats.dtype in (torch.float32, torch.float64) else feats.float()
        rep = torch.arange(n, device=dev).expand(b, n)
        assign = torch.arange(n, device=dev).expand(b, n)
        while sums.shape[1] > k:
            cur = sums.shape[1]
            r = min(cur - k, (cur + 1) // 2)
            sums, rep, slot = bipartite_round(sums, rep, r)
            assign = slot.gather(1, assign)
        return Reduced(rep, group_weights(assign, k))
