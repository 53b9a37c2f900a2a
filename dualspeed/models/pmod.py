"""p-MoD: Mixture-of-Depths decoder layers over the vision tokens (the comparison row).

Each MoD layer lets only the top-scoring fraction of a sample's vision tokens through; the rest skip
it. Text tokens always go through. Router s = w^T x + b reads the residual input (zero-initialised);
TanhNorm w~ = alpha * tanh(s) + beta; STRing: a kept vision token gets x + Attn(x) + w~ * MLP(.), a
skipped one w~ * x, so both paths carry the router's gradient. PRD sets each layer's keep ratio.

The decoder loop here replaces LlamaModel.forward for a p-MoD model, because each MoD layer attends
over its own subset of tokens (with the original RoPE positions, so positions have gaps) and, at
generation, keeps only that subset in its KV cache. Batches of any size are routed together; samples
keep different numbers of tokens through padding slots that are masked out.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache

from . import inllm


def prd_ratios(n_layers: int, dense_above: float = 0.85, floor: float = 0.15) -> list[float | None]:
    """Progressive ratio decay: keep ratio per layer, None for a dense layer.

    r_raw(l) = 1/2 cos(pi l / (L-1)) + 1/2; dense where r_raw > dense_above, else max(r_raw, floor)."""
    out = []
    for layer in range(n_layers):
        raw = 0.5 * math.cos(math.pi * layer / (n_layers - 1)) + 0.5 if n_layers > 1 else 1.0
        out.append(None if raw > dense_above else max(raw, floor))
    return out


class PMoD(nn.Module):
    """The routers and ratios of a p-MoD LLM; holds no decoder weights."""

    def __init__(self, hidden: int, ratios: list[float | None], alpha: float = 0.2, beta: float = 1.0):
        super().__init__()
        self.ratios, self.alpha, self.beta = list(ratios), alpha, beta
        self.routers = nn.ModuleDict({str(i): nn.Linear(hidden, 1) for i, r in enumerate(ratios) if r is not None})
        for lin in self.routers.values():  # zero init: w~ = beta = 1 at the start, the dense layer's output
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def meta(self) -> dict:
        return {"ratios": self.ratios, "alpha": self.alpha, "beta": self.beta}

    def tanh_norm(self, s: torch.Tensor) -> torch.Tensor:
        return self.alpha * torch.tanh(s) + self.beta


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))


def _mod_layer(layer, i: int, pmod: PMoD, x, pe, key_valid, vision, cache):
    """Routed layer i over [B, T, D] -> ([B, T, D], the kept slots' key validity [B, T'])."""
    s = pmod.routers[str(i)](x).squeeze(-1)  # [B, T]
    k = torch.floor(pmod.ratios[i] * vision.sum(1).to(torch.float64)).long()  # per sample
    # rank vision tokens by s itself (not w~, whose tanh saturates into ties)
    order = s.detach().float().masked_fill(~vision, float("-inf")).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(s.shape[1], device=s.device).expand_as(order))
    keep = (vision & (rank < k[:, None])) | (~vision & key_valid)  # padding skips every layer
    counts = keep.sum(1)
    idx = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, : int(counts.max())]  # kept first, in order
    slot = torch.arange(idx.shape[1], device=x.device)[None, :] < counts[:, None]
    w = torch.where(vision, pmod.tanh_norm(s), torch.ones_like(s)).to(x.dtype)
    xs, ws = _gather(x, idx), w.gather(1, idx)
    kv = key_valid.gather(1, idx) & slot
    attn, _ = layer.self_attn(layer.input_layernorm(xs), position_embeddings=(_gather(pe[0], idx), _gather(pe[1], idx)),
                              attention_mask=inllm.additive_mask(kv, idx.shape[1], xs.dtype), past_key_values=cache)
    h = xs + attn
    ys = h + ws[..., None] * layer.mlp(layer.post_attention_layernorm(h))
    base = x * w[..., None]  # skipped vision tokens: w~ x (padding: x)
    ys = torch.where(slot[..., None], ys, _gather(base, idx))  # slots past a sample's count hold skipped tokens
    return base.scatter(1, idx[..., None].expand_as(ys), ys), kv


def prefill(lm, pmod: PMoD, embeds, mask, vision, cache: DynamicCache | None = None):
    """The decoder over a padded batch -> (final-normed hidden [B, T, D], per-layer key validity for decoding).

    mask: [B, T] real tokens; vision: [B, T] the visual-sequence positions (routable)."""
    dec = inllm.decoder(lm)
    key_valid = mask.bool()
    vision = vision.bool() & key_valid
    pos = (key_valid.long().cumsum(1) - 1).clamp(min=0)  # left or right padding alike
    pe = dec.rotary_emb(embeds, pos)
    dense_mask = inllm.additive_mask(key_valid, embeds.shape[1], embeds.dtype)
    x, kept = embeds, []
    for i, layer in enumerate(dec.layers):
        if pmod.ratios[i] is None:
            x = layer(x, attention_mask=dense_mask, position_embeddings=pe, past_key_values=cache)
            kept.append(key_valid)
        else:
            args = (layer, i, pmod, x, pe, key_valid, vision, cache)
            # the dense layers checkpoint themselves (HF's GradientCheckpointingLayer); a MoD layer is
            # called piecewise here, so it is checkpointed here, with the same switch
            if getattr(layer, "gradient_checkpointing", False) and layer.training and torch.is_grad_enabled():
                x, kv = checkpoint(_mod_layer, *args, use_reentrant=False)
            else:
                x, kv = _mod_layer(*args)
            kept.append(kv)
    return dec.norm(x), kept


def decode_step(lm, x, pos, kept: list[torch.Tensor], cache: DynamicCache):
    """One new (text) token per sample through every layer with cached keys -> final-normed hidden [B, 1, D].

    kept: each layer's key validity, extended in place with the new token."""
    dec = inllm.decoder(lm)
    pe = dec.rotary_emb(x, pos)
    for i, layer in enumerate(dec.layers):
        kept[i] = torch.cat([kept[i], kept[i].new_ones(kept[i].shape[0], 1)], dim=1)
        x = layer(x, attention_mask=inllm.additive_mask(kept[i], 1, x.dtype), position_embeddings=pe, past_key_values=cache)
    return dec.norm(x)


@torch.no_grad()
def greedy(model, embeds, mask, vision, max_new_tokens: int, eos_token_id, pad_token_id):
    """Greedy decoding of a left-padded batch by a p-MoD DualSpeedLlava: routed prefill, then cached
    decode -> new ids [B, <=max_new]."""
    cache = DynamicCache()
    hidden, kept = prefill(model.language_model, model.pmod, embeds, mask, vision, cache)
    pos = mask.long().sum(1, keepdim=True) - 1  # left-padded: every sample's last prompt token is the last column

    def step(x, i):
        return decode_step(model.language_model, x, pos + 1 + i, kept, cache)

    return inllm.decode(model, model.llava.lm_head(hidden[:, -1:]), step, max_new_tokens, eos_token_id,
                             pad_token_id)
