"""CDPruner: the k tokens that maximise a conditional DPP over the projected features, batched over crops.

Kernel L = diag(q) S diag(q): S the cosine similarity of the L2-normalised projected tokens, q each
token's relevance to the instruction, min-max normalised per crop. Greedy MAP inference keeps, for
every candidate, its conditional variance d_j^2 = L_jj - |c_j|^2 given the tokens chosen so far and
updates it with one new Cholesky row per step (Chen, Zhang & Zhou, NeurIPS 2018), so a batch costs
O(k N^2) after the kernel with no per-image loop.

Relevance q: the model's `relevance` signal (models/signals.py), negated or not, then min-max normalised
per crop; without an instruction (the plain pretraining template) or with a flat relevance q = 1 and
CDPruner is a plain DPP (diversity only). The model picks the source, recorded in provenance:

- CLIP's text tower (`clip_text`), where the run has one: the real recipes, whose vision tower repo
  openai/clip-vit-large-patch14-336 is the whole CLIPModel, and the tiny default, whose CLIP stand-in is
  trained with its text tower (model.clip_text=auto; models/clip_text.py). As in the published code: LLaVA's
  feature-layer patches (layer -2) through the tower's post_layernorm and CLIP's visual_projection, against
  CLIPTextModelWithProjection's embedding of the instruction.
- The instruction's LLM input embeddings against the projected tokens (`llm_instruction_embeddings`):
  any run with model.clip_text=none.

The sign follows the source (`negate` unset); `cdpruner:negate=true|false` forces one for both.
CLIP source: negated, as the published code does for LLaVA's CLIP (llava_arch.py takes the mean of
-relevance; its scripts/visualize_relevance.py draws the negated map over COCO objects). No real CLIP is
reachable offline; the sign was chosen for exactly the space this path computes in - the same CLIP
ViT-L/14-336, the same penultimate-layer patches, the same joint-space head - and fits what is known of that
space: the head is trained on the last layer's CLS token only, and CLIP's patch-text similarity maps are
reported to light up the background rather than the object a text names (CLIP Surgery's "opposite
visualisation", Li et al., 2023, arXiv:2304.05653), as the authors' negated maps imply. The tiny stand-in
CLIP, trained the same way (pooled image token against the caption), agrees, weakly: measured with
scripts/cdpruner_relevance_sign.py on 400 held-out questions (2026-12-01), its unnegated relevance ranks
object patches above background patches with AUC 0.46, so the negated one with 0.54.
On another CLIP, or with a fine-tuned tower, re-check it with that script.
LLM source: kept (negate=False). The projector is trained to put visual tokens in the LLM's input space,
where a token resembling a word of the question can be about it - but nothing ties the sign down: on the
tiny default's baseline checkpoints the unnegated relevance ranks object patches above background with AUC
0.63 on seed 0 and 0.08 on seed 1 (same script), so with clip_text=none CDPruner's relevance is a
seed's accident there; the grid gives CDPruner the CLIP.

Where this differs from the published code: the CLIP text is each user turn of the prompt, cut to 77
tokens (published: the bare question, with some benchmarks' answer-format suffix removed, split into
77-token segments); q is normalised per crop (published: over the whole batch, i.e. across the crops of
a LLaVA-NeXT image, plus 1e-6).
"""
from __future__ import annotations

import torch

from .base import SOURCE_CLIP, Option, VTPContext, VTPMethod, register

EPS = 1e-10  # conditional variances below this are duplicates of the chosen set: gain 0, no update


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[B, N, D] x [B, M, D] -> [B, N, M] cosine similarities, dividing the products rather than
    normalised copies of the (7B: 4096-wide) features."""
    na, nb = a.norm(dim=-1).clamp_min(1e-12), b.norm(dim=-1).clamp_min(1e-12)
    return (a @ b.transpose(1, 2)) / (na[:, :, None] * nb[:, None, :])


def normalise(r: torch.Tensor, negate: bool = False) -> torch.Tensor:
    """Raw relevance [B, N] -> q [B, N] in [0, 1], min-max per row; a flat row (also every row without
    instruction, whose relevance is all zeros) gives q = 1."""
    r = -r if negate else r
    lo, hi = r.amin(1, keepdim=True), r.amax(1, keepdim=True)
    flat = (hi - lo) < 1e-6
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
    signals = ("relevance",)
    options = {"negate": Option("true, false or auto",
                                lambda v: isinstance(v, bool) or (isinstance(v, str) and v.lower() == "auto"))}

    def __init__(self, negate: bool | str | None = None):
        # "auto" or unset: the source's own sign (None)
        self.negate = None if negate is None or isinstance(negate, str) else bool(negate)

    def negated(self, source: str | None) -> bool:
        return self.negate if self.negate is not None else source == SOURCE_CLIP

    def describe(self) -> dict:
        return {**super().describe(), "negate": "auto" if self.negate is None else self.negate}

    def provenance(self, sources: dict) -> dict:
        out = super().provenance(sources)
        if "relevance" in sources:
            out["negate"] = self.negated(sources["relevance"])  # the sign that ran, not the option
        return out

    def select(self, feats: torch.Tensor, k: int, ctx: VTPContext) -> torch.Tensor:
        x = feats if feats.dtype in (torch.float32, torch.float64) else feats.float()
        q = normalise(ctx.relevance.to(x.dtype), self.negated(ctx.relevance_source))
        kernel = q[:, :, None] * cosine(x, x) * q[:, None, :]
        return dpp_greedy(kernel, k)
