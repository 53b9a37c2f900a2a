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
    """sums [B, n, D] group sums in original-patch order, rep [B, n] their original index; merge r A tokens
    into B. -> (new sums, new rep, slot [B, n]: each old token's position in the new sequence).

    Survivors keep their relative order, so the new sequence is the survivors in place: one scatter-add
    and one gather of the features per round."""
    b, n, d = sums.shape
    dev = sums.device
    xa, xb = sums[:, 0::2], sums[:, 1::2]
    norm = sums.norm(dim=-1).clamp_min(1e-12)
    sim = (xa @ xb.transpose(1, 2)) / (norm[:, 0::2, None] * norm[:, None, 1::2])  # cosine, [B, nA, nB]
    dst = sim.argmax(dim=2)  # first maximum: lower B index on ties
    score = sim.gather(2, dst.unsqueeze(-1)).squeeze(-1)
    merged = score.argsort(dim=1, descending=True, stable=True)[:, :r]  # equal scores: lower A index first
    src_pos, dst_pos = 2 * merged, 2 * dst.gather(1, merged) + 1  # positions in the current sequence
    sums = sums.scatter_add(1, dst_pos.unsqueeze(-1).expand(-1, -1, d),
                            sums.gather(1, src_pos.unsqueeze(-1).expand(-1, -1, d)))
    alive = torch.ones(b, n, dtype=torch.bool, device=dev).scatter_(1, src_pos, False)
    keep = alive.nonzero()[:, 1].view(b, n - r)  # row-major: ascending positions per row
    slot = alive.long().cumsum(1) - 1  # a survivor's new position
    slot.scatter_(1, src_pos, slot.gather(1, dst_pos))  # a merged token goes where its partner went
    return sums.gather(1, keep.unsqueeze(-1).expand(-1, -1, d)), rep.gather(1, keep), slot


@register("tome")
class ToMe(MergeMethod):
    options = {}  # takes none

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
