"""PyramidDrop (the third family): visual tokens dropped in stages inside the LLM, ranked by attention.

The LLM's layers split into stages at `layers` (the number of layers before each drop; LLaVA-1.5-7B's
recipe: 8, 16, 24 of 32). After the k-th boundary each image keeps floor(N * lam^k) of its N visual
tokens (lam 0.5: 1 -> 0.5 -> 0.25 -> 0.125). Ranking: the next layer's input norm, q/k projections and
RoPE on the detached hidden states; an fp32 softmax over every key under the causal mask, averaged over
heads, then over the query tokens, read at the image keys; the top k are kept in their original order.
The queries are the token before each supervised answer span (training, and likelihood scoring) or the
last prompt token (generation). Each sequence is then rebuilt as text / kept visual tokens / text,
right-padded, with positions reset to 0..len-1. No parameters: a PyramidDrop checkpoint is a dense
llava-hf model, and the dropping is a way of running it.

The decoder loop here replaces LlamaModel.forward while dropping, because the sequence shrinks between
layers and the rotary cos/sin must be recomputed for the new positions (transformers computes them once
per forward). Needs right padding: a query is found by its place in the sequence, and the rebuilt
sequences are right-padded; generation's left-padded prompts are moved right before the prefill.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

from . import inllm

QUERY_ANSWERS, QUERY_LAST = "answers", "last"  # the two ways of choosing the ranking queries


@dataclass(frozen=True)
class PDrop:
    """PyramidDrop's settings: drop after `layers` (increasing, each in 1..L-1), keep ratio `lam` per stage."""

    layers: tuple
    lam: float = 0.5

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))

    def check(self, n_layers: int) -> "PDrop":
        bad = [x for x in self.layers if not 1 <= x <= n_layers - 1]
        if not self.layers or bad or list(self.layers) != sorted(set(self.layers)):
            raise ValueError(f"PyramidDrop layers {list(self.layers)} must be strictly increasing, each in 1..{n_layers - 1} "
                             f"(the LLM has {n_layers} layers)")
        if not 0.0 < self.lam <= 1.0:
            raise ValueError(f"PyramidDrop lam {self.lam} must be in (0, 1]")
        return self

    def keep(self, n_visual: torch.Tensor, stage: int) -> torch.Tensor:
        """Visual tokens an image of n_visual keeps after the stage-th boundary (1-based): floor(N * lam^stage)."""
        return torch.floor(n_visual.to(torch.float64) * self.lam ** stage).long()

    def meta(self) -> dict:
        return {**asdict(self), "layers": list(self.layers)}


def check_right_padded(mask: torch.Tensor) -> None:
    """Refuse a batch with padding before a real token: the ranking and the rebuild assume right padding."""
    m = mask.bool()
    if bool((~m[:, :-1] & m[:, 1:]).any()):
        raise ValueError("PyramidDrop needs right-padded batches (config key 'pdrop.padding_side' must be 'right'): "
                         "a padding slot precedes a real token")


def query_positions(labels: torch.Tensor | None, mask: torch.Tensor, how: str) -> list[torch.Tensor]:
    """Per sample, the positions whose attention ranks the visual tokens: the token before each supervised span
    (answers) or the last real token (last)."""
    m = mask.bool()
    if how == QUERY_LAST:
        return [(m[b].sum() - 1).reshape(1) for b in range(m.shape[0])]
    sup = (labels != -100) & m
    starts = sup[:, 1:] & ~sup[:, :-1]  # position t+1 opens a span: t is its query
    return [starts[b].nonzero().flatten() for b in range(m.shape[0])]


@torch.no_grad()
def scores(layer, x, pe, mask, queries: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """Attention of each sample's queries to every key, as the next layer would compute it from the detached
    hidden states x [B, T, D]: mean over heads, then over queries -> [T] per sample (None: no query)."""
    attn = layer.self_attn
    h = layer.input_layernorm(x.detach())
    b, t, _ = h.shape
    hd = attn.head_dim
    q = attn.q_proj(h).view(b, t, -1, hd).transpose(1, 2)  # [B, H, T, hd]
    k = attn.k_proj(h).view(b, t, -1, hd).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, *pe)
    k = repeat_kv(k, q.shape[1] // k.shape[1])
    keys = torch.arange(t, device=x.device)
    out = []
    for i, pos in enumerate(queries):
        if pos.numel() == 0:
            out.append(None)
            continue
        allowed = (keys[None, :] <= pos[:, None]) & mask[i].bool()[None, :]  # the causal mask's rows [Q, T]
        logits = (q[i][:, pos] @ k[i].transpose(1, 2)).float() / math.sqrt(hd)  # [H, Q, T]
        logits = logits.masked_fill(~allowed, torch.finfo(torch.float32).min)
        out.append(torch.softmax(logits, dim=-1).mean(0).mean(0))
    return out


def rank_drop(layer, x, pe, mask, labels, vision, keep: torch.Tensor, how: str):
    """One boundary: rank each sample's visual tokens with `layer` and keep keep[b] of them, in order.

    x [B, T, D], mask/labels/vision [B, T] (right-padded); keep [B] -> (x, mask, labels, vision, kept) of the
    rebuilt right-padded batch, kept[b] the positions (in the input) of the visual tokens sample b keeps, or None
    where it passed through (no image, or no query)."""
    m = mask.bool()
    vis = vision.bool() & m
    att = scores(layer, x, pe, m, query_positions(labels, m, how))
    stay, kept = m.clone(), []
    for b, s in enumerate(att):
        where = vis[b].nonzero().flatten()
        if s is None or where.numel() == 0:
            kept.append(None)
            continue
        top = s[where].topk(int(keep[b])).indices.sort().values  # the top k, back in sequence order
        stay[b, where] = False
        stay[b, where[top]] = True
        kept.append(where[top])
    counts = stay.sum(1)
    idx = torch.argsort((~stay).to(torch.int8), dim=1, stable=True)[:, : int(counts.max())]  # kept first, in order
    slot = torch.arange(idx.shape[1], device=x.device)[None, :] < counts[:, None]
    x = x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1])) * slot[..., None].to(x.dtype)
    lab = torch.where(slot, labels.gather(1, idx), torch.full_like(idx, -100)) if labels is not None else None
    return x, slot.to(mask.dtype), lab, vis.gather(1, idx) & slot, kept


def positions(mask: torch.Tensor) -> torch.Tensor:
    """0..len-1 over each right-padded row (padding continues the count; it is masked anyway)."""
    return torch.arange(mask.shape[1], device=mask.device).expand(mask.shape[0], -1)


def forward(lm, pdrop: PDrop, embeds, mask, labels, vision, how: str = QUERY_ANSWERS,
            cache: DynamicCache | None = None, trace: list | None = None):
    """The decoder over a right-padded batch, dropping at each boundary -> (final-normed hidden [B, T', D],
    labels [B, T'] of the rebuilt batch, each layer's key validity for decoding).

    vision: [B, T] the visual-sequence positions. trace: if a list, each stage's kept input positions, rebuilt
    position ids and mask are appended to it (the golden test reads them)."""
    check_right_padded(mask)
    dec = inllm.decoder(lm)
    n_vis = (vision.bool() & mask.bool()).sum(1)
    pos = positions(mask)
    pe = dec.rotary_emb(embeds, pos)
    dense = inllm.additive_mask(mask.bool(), embeds.shape[1], embeds.dtype)
    x, key_valid, stage = embeds, [], 0
    for i, layer in enumerate(dec.layers):
        x = layer(x, attention_mask=dense, position_embeddings=pe, past_key_values=cache)
        key_valid.append(mask.bool())
        if i + 1 in pdrop.layers:
            stage += 1
            x, mask, labels, vision, kept = rank_drop(dec.layers[i + 1], x, pe, mask, labels, vision,
                                                      pdrop.keep(n_vis, stage), how)
            pos = positions(mask)
            pe = dec.rotary_emb(x, pos)  # the shorter sequence's positions: new cos/sin
            dense = inllm.additive_mask(mask.bool(), x.shape[1], x.dtype)
            if trace is not None:
                trace.append({"layer": i + 1, "kept": kept, "position_ids": pos * mask, "mask": mask})
    return dec.norm(x), labels, key_valid


def decode_step(lm, pdrop: PDrop, x, lengths: list[torch.Tensor], step: int, key_valid: list, cache: DynamicCache):
    """One new token per sample through every layer with cached keys -> final-normed hidden [B, 1, D].

    lengths: each stage's real length per sample after the prefill: a stage's new token sits at its own
    position, lengths[stage] + step (the dropped tokens shift it). key_valid: extended in place."""
    dec = inllm.decoder(lm)
    pes = [dec.rotary_emb(x, (n + step)[:, None]) for n in lengths]
    stage = 0
    for i, layer in enumerate(dec.layers):
        key_valid[i] = torch.cat([key_valid[i], key_valid[i].new_ones(key_valid[i].shape[0], 1)], dim=1)
        x = layer(x, attention_mask=inllm.additive_mask(key_valid[i], 1, x.dtype), position_embeddings=pes[stage],
                  past_key_values=cache)
        stage += (i + 1) in pdrop.layers
    return dec.norm(x)


@torch.no_grad()
def greedy(model, pdrop: PDrop, embeds, mask, vision, max_new_tokens: int, eos_token_id, pad_token_id):
    """Greedy decoding of a right-padded batch: the prefill drops (the last prompt token ranks), decoding
    reads each layer's shortened cache -> new ids [B, <=max_new]."""
    cache = DynamicCache()
    hidden, _, key_valid = forward(model.language_model, pdrop, embeds, mask, None, vision, QUERY_LAST, cache)
    stages = [0] + [b for b in pdrop.layers]
    lengths = [key_valid[s].sum(1) for s in stages]  # real tokens each stage holds
    last = lengths[-1] - 1

    def step(x, i):
        return decode_step(model.language_model, pdrop, x, lengths, i, key_valid, cache)

    first = model.llava.lm_head(hidden[torch.arange(hidden.shape[0]), last])[:, None]
    return inllm.decode(model, first, step, max_new_tokens, eos_token_id, pad_token_id)
