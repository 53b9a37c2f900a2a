"""VisionZip: dominant tokens by CLS attention, the rest merged into a few contextual tokens.

Of the k output tokens, `dominant` are the patches the tower's CLS query attends to most (attention
of the LLaVA feature layer's producer, the penultimate CLIP layer for the real recipes, summed over
heads). The other N - dominant patches are merged into k - dominant contextual tokens: uniformly
spaced ones among them are the targets, and every other patch joins the target whose attention key
(averaged over heads) is most cosine-similar. Ties go to the lower patch index among equal attentions,
and to the lower target among equally similar ones.

Defaults follow VisionZip's split for LLaVA (54 dominant + 10 contextual of 64 kept): dominant =
round(54/64 * k). `visionzip:dominant=0.75` sets the fraction; a whole number >= 1 sets the count, which must
fit in the k tokens a crop keeps (checked at plan time where the config gives the tokens per crop, and at
every step).

Two differences from the published code, both deliberate: (1) tokens are merged after the projector,
on what the LLM reads, because a plugin acts on projected features (the projector is an MLP, so this is
not the same as merging CLIP features and projecting); (2) a contextual token is the mean of its target
and the patches assigned to it, while the published code adds the target to the mean of the others,
doubling its scale relative to every other visual token the LLM sees.
"""
from __future__ import annotations

import torch

from .base import MergeMethod, Option, Reduced, VTPContext, group_weights, register

DOMINANT = 54 / 64


def split(k: int, dominant: float) -> tuple[int, int]:
    """k -> (dominant, contextual) counts."""
    nd = int(dominant) if dominant >= 1 else int(round(dominant * k))
    nd = min(max(nd, 1), k)  # at least one dominant token: the CLS-attended patch
    return nd, k - nd


@register("visionzip")
class VisionZip(MergeMethod):
    signals = ("cls_attention", "keys")
    options = {"dominant": Option("a fraction of the kept tokens in (0, 1), or a whole count >= 1 of them",
                                  lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                                  and (0 < v < 1 or (v >= 1 and float(v).is_integer())))}

    def __init__(self, dominant: float = DOMINANT):
        self.dominant = dominant

    def fits(self, k: int) -> str | None:
        if self.dominant >= 1 and self.dominant > k:
            return f"dominant={self.dominant:g} dominant tokens do not fit in the k={k} tokens a crop keeps"
        return None

    def describe(self) -> dict:
        return {**super().describe(), "dominant": self.dominant}

    def merge(self, feats: torch.Tensor, k: int, ctx: VTPContext) -> Reduced:
        b, n, _ = feats.shape
        dev = feats.device
        nd, nc = split(k, self.dominant)
        attn = ctx.cls_attention.float()
        if attn.shape != (b, n) or ctx.keys.shape[:2] != (b, n):
            raise ValueError(f"visionzip: cls_attention {tuple(attn.shape)} / keys {tuple(ctx.keys.shape)} do not "
                             f"match features {(b, n)}")
        order = attn.argsort(dim=1, descending=True, stable=True)  # equal attention: lower index first
        dom = order[:, :nd]
        rest = order[:, nd:].sort(dim=1).values  # [B, N - nd] the others, in raster order
        assign = torch.full((b, n), -1, dtype=torch.long, device=dev)
        assign.scatter_(1, dom, torch.arange(nd, device=dev).expand(b, nd))
        index = dom
        if nc:
            m = n - nd
            step = max(1, m // nc)
            tpos = torch.arange(0, m, step, device=dev)[:nc]  # uniformly spaced targets among the rest
            targets = rest[:, tpos]  # [B, nc]
            keys = torch.nn.functional.normalize(ctx.keys.float(), dim=-1)
            rk = keys.gather(1, rest.unsqueeze(-1).expand(-1, -1, keys.shape[-1]))  # [B, m, Dh]
            sim = rk @ rk[:, tpos].transpose(1, 2)  # [B, m, nc]
            slot = sim.argmax(dim=2) + nd  # first maximum: lower target on ties
            slot[:, tpos] = torch.arange(nd, nd + nc, device=dev)  # a target is its own group
            assign.scatter_(1, rest, slot)
            index = torch.cat([dom, targets], dim=1)
        return Reduced(index, group_weights(assign, k))
