"""The side information VTP methods declare, gathered by the model without a second tower pass.

Tower signals come from forward hooks on the q/k projections of one CLIP attention layer: the tower
computes those anyway, so asking for them costs one CLS-row attention per crop, not another pass or
`output_attentions` (which would materialise every layer's [H, N+1, N+1] maps and leave SDPA).
Instruction signals (text, relevance) come from the prompt ids the batch already holds; relevance from
CLIP's text tower reads the tower features LLaVA projects, kept from that same pass (clip_text.py).
"""
from __future__ import annotations

import contextlib

import torch

from ..vtp.base import SOURCE_CLIP, SOURCE_LLM, VTPContext


def attention_layer(feature_layer: int, num_layers: int, signal_layer: int | None = None) -> int:
    """Index of the encoder layer whose attention to read.

    hidden_states[j] is the output of encoder layer j - 1 (hidden_states[0] is the embeddings), so by
    default the layer that produces LLaVA's feature layer: -2 -> layer L - 2, the penultimate.
    """
    if signal_layer is not None:
        layer = signal_layer if signal_layer >= 0 else num_layers + signal_layer
    else:
        j = feature_layer if feature_layer >= 0 else num_layers + 1 + feature_layer
        layer = j - 1
    if not 0 <= layer < num_layers:
        raise ValueError(f"no encoder layer {layer} to read attention from (the tower has {num_layers}; "
                         f"feature layer {feature_layer}, signal layer {signal_layer})")
    return layer


@contextlib.contextmanager
def tower_signals(tower, layer: int, wanted: tuple[str, ...]):
    """While active, the tower's forward leaves {'cls_attention': [C, N], 'keys': [C, N, Dh]} (patch
    tokens only, CLS excluded) in the yielded dict, for the signals in `wanted`."""
    out: dict[str, torch.Tensor] = {}
    if not {"cls_attention", "keys"} & set(wanted):
        yield out
        return
    attn = tower.vision_model.encoder.layers[layer].self_attn
    heads, hd = attn.num_heads, attn.head_dim
    seen: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_module, _inputs, output):
            seen[name] = output.detach()
            if "k" in seen and ("q" in seen or "cls_attention" not in wanted):
                _finish()
        return hook

    def _finish():
        k = seen.pop("k").float()  # [C, N+1, H*hd]
        c, n1, _ = k.shape
        kh = k.view(c, n1, heads, hd)
        if "keys" in wanted:
            out["keys"] = kh[:, 1:].mean(2)  # VisionZip's metric: keys averaged over heads
        if "cls_attention" in wanted:
            q = seen.pop("q")[:, 0].float().view(c, heads, hd)  # the CLS query only
            logits = torch.einsum("chd,cnhd->chn", q, kh) * attn.scale
            out["cls_attention"] = logits.softmax(-1)[:, :, 1:].sum(1)  # CLS -> patches, summed over heads

    handles = [attn.k_proj.register_forward_hook(keep("k"))]
    if "cls_attention" in wanted:
        handles.append(attn.q_proj.register_forward_hook(keep("q")))
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


def prompt_rows(image_token_id: int, input_ids, attention_mask, labels, has_image):
    """The image samples' ids [I, T] and which of them are the instruction [I, T]: every prompt token
    that is not padding, an answer or the image placeholder."""
    sel = has_image.bool()
    ids = input_ids[sel]
    return ids, attention_mask[sel].bool() & (labels[sel] == -100) & (ids != image_token_id)


def text_context(embed_tokens, image_token_id: int, input_ids, attention_mask, labels, has_image,
                 crops: list[int]) -> dict:
    """Instruction embeddings of the image samples, one row per crop (see prompt_rows for which tokens)."""
    ids, mask = prompt_rows(image_token_id, input_ids, attention_mask, labels, has_image)
    reps = torch.tensor(crops, device=ids.device)
    with torch.no_grad():
        emb = embed_tokens(ids)
    return {"text_embeds": emb.repeat_interleave(reps, 0), "text_mask": mask.repeat_interleave(reps, 0)}


def llm_relevance(feats: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[C, N, D] projected tokens, [C, T, D] instruction embeddings, [C, T] mask -> [C, N] cosine similarity
    averaged over the instruction (float32 at least; 0 for a row without instruction tokens)."""
    x = feats if feats.dtype in (torch.float32, torch.float64) else feats.float()
    m = mask.to(x.dtype)
    na, nb = x.norm(dim=-1).clamp_min(1e-12), text.to(x.dtype).norm(dim=-1).clamp_min(1e-12)
    # the products divided by the norms rather than normalised copies of the (7B: 4096-wide) features
    sim = (x @ text.to(x.dtype).transpose(1, 2)) / (na[:, :, None] * nb[:, None, :])
    return (sim * m[:, None]).sum(-1) / m.sum(-1, keepdim=True).clamp_min(1.0)


def gather(model, prune, feats: torch.Tensor, tower_out: dict, input_ids, attention_mask, labels, has_image,
           crops: list[int]) -> VTPContext:
    """The VTPContext of one batch: the tower signals from the pass already made, the instruction signals
    computed here, and only what `prune`'s method declares."""
    wanted = set(prune.signals)
    clip = model.clip_text if "relevance" in wanted else None
    text = None
    if "text" in wanted or ("relevance" in wanted and clip is None):
        text = text_context(model.embed_tokens, model.image_token_id, input_ids, attention_mask, labels, has_image,
                            crops)
    rel = source = None
    if clip is not None:
        ids, mask = prompt_rows(model.image_token_id, input_ids, attention_mask, labels, has_image)
        rel, source = clip.relevance(tower_out.pop("patches"), ids, mask, crops), SOURCE_CLIP
    elif "relevance" in wanted:
        rel, source = llm_relevance(feats.detach(), text["text_embeds"], text["text_mask"]), SOURCE_LLM
    if "text" not in wanted:
        text = None
    return VTPContext(text_embeds=(text or {}).get("text_embeds"), text_mask=(text or {}).get("text_mask"),
                      cls_attention=tower_out.get("cls_attention"), keys=tower_out.get("keys"),
                      generator=prune.generator, relevance=rel, relevance_source=source)
