"""CDPruner: the k tokens that maximise a conditional DPP over the projected features, batched over crops.

Kernel L = diag(q) S diag(q): S the cosine similarity of the L2-normalised projected tokens, q each
token's relevance to the instruction, min-max normalised per crop. Greedy MAP inference keeps, for
every candidate, its conditional variance d_j^2 = L_jj - |c_j|^2 given the tokens chosen so far and
updates it with one new Cholesky row per step (Chen, Zhang & Zhou, NeurIPS 2018), so a batch costs
O(k N^2) after the kernel with no per-image loop.

Relevance. The published code maps CLIP's penultimate patch features through CLIP's joint-space head,
scores them against the CLIP text tower and *negates* the mean similarity for LLaVA's CLIP, observing
that the raw sign ranks background above objects there. This harness scores the projected tokens
against the instruction's own LLM input embeddings instead (the tiny model has no text tower, and the
real recipes' llava-hf checkpoints carry none): the projector is trained to put visual tokens in that
space, where, as in any embedding space trained through the LLM, a token resembling a word of the
question is about it, so the sign is kept (negate=False). Measured on the smoke pipeline's tiny
checkpoints (scripts/cdpruner_relevance_sign.py, 48 synthetic questions, 2026-11-23): the unnegated
relevance ranks object patches above background patches with AUC 0.60 (warm-up) and 0.70 (baseline
SFT), so negating would rank background first here. The negation is a property of CLIP's penultimate
layer against its text head, which this path does not use; `cdpruner:negate=true` runs the published
sign for comparison. Without instruction tokens (the plain pretraining template) or with a
flat relevance, q = 1 and CDPruner is a plain DPP (diversity only).
"""
from __future__ import annotations

import torch

from .base import VTPContext, VTPMethod, register

EPS = 1e-10  # conditional variances below this are duplicates of the chosen set: gain 0, no update


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[B, N, D] x [B, M, D] -> [B, N, M] cosine similarities, dividing the products rather than
    normalised copies of the (7B: 4096-wide) features."""
    na, nb = a.norm(dim=-1).clamp_min(1e-12), b.norm(dim=-1).clamp_min(1e-12)
    return (a @ b.transpose(1, 2)) / (na[:, :, None] * nb[:, None, :])


def relevance(feats: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, negate: bool = False) -> torch.Tensor:
    """[B, N, D] tokens, [B, T, D] instruction embeddings, [B, T] mask -> q [B, N] in [0, 1]."""
    m = mask.to(feats.dtype)
    sim = cosine(feats, text.to(feats.dtype))
    r = (sim * m[:, None]).sum(-1) / m.sum(-1, keepdim=True).clamp_min(1.0)
    r = -r if negate else r
    lo, hi = r.amin(1, keepdim=True), r.amax(1, keepdim=True)
    flat = (hi - lo) < 1e-6  # also every row without instruction tokens
    return torch.where(flat, torch.ones_like(r), (r - lo) / (hi - lo).clamp_min(1e-6))


def dpp_greedy(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """[B, N, N] PSD kernels -> [B, k] greedy MAP picks in order; ties go to the lowest index."""
    b, n, _ = kernel.shape
    rows = torch.arange(b, device=kernel.device)
    cis = kernel.new_zeros(b, k, n)
    di2 = kernel.diagonal(dim1=1, dim2=2).clone()
    taken = torch.zeros(b, n, dtype=torch.bool, device=kernel.device)
    chosen = torch.empty(b, k, dtype=torch.long, device=kernel.device)
    for i in range(k):
        gain = di2.clamp_min(0.0)
        gain = gain.masked_fill(gain < EPS, 0.0).masked_fill(taken, -1.0)
        j = gain.argmax(dim=1)  # the first maximum: lowest index on ties
        chosen[:, i] = j
        taken[rows, j] = True
        dj = gain[rows, j]
        ok = dj > 0
        num = kernel[rows, j] - torch.einsum("bt,btn->bn", cis[rows, :i, j], cis[:, :i])
        e = torch.where(ok[:, None], num / dj.clamp_min(EPS).sqrt()[:, None], torch.zeros_like(num))
        cis[:, i] = e
        di2 = di2 - e.square()
    return chosen


@register("cdpruner")
class CDPruner(VTPMethod):
    signals = ("text",)

    def __init__(self, negate: bool = False):
        self.negate = bool(negate)

    def describe(self) -> dict:
        return {**super().describe(), "relevance": "llm_instruction_embeddings", "negate": self.negate}

    def select(self, feats: torch.Tensor, k: int, ctx: VTPContext) -> torch.Tensor:
        x = feats if feats.dtype in (torch.float32, torch.float64) else feats.float()
        q = relevance(x, ctx.text_embeds, ctx.text_mask, self.negate)
        kernel = q[:, :, None] * cosine(x, x) * q[:, None, :]
        return dpp_greedy(kernel, k)
