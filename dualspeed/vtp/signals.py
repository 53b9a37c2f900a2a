"""The side information VTP methods declare, gathered by the model without a second tower pass.

Tower signals come from forward hooks on the q/k projections of one CLIP attention layer: the tower
computes those anyway, so asking for them costs one CLS-row attention per crop, not another pass or
`output_attentions` (which would materialise every layer's [H, N+1, N+1] maps and leave SDPA).
"""
from __future__ import annotations

import contextlib

import torch

from .base import VTPContext


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


def text_context(embed_tokens, image_token_id: int, input_ids, attention_mask, labels, has_image,
                 crops: list[int]) -> dict:
    """Instruction embeddings of the image samples, one row per crop: every prompt token that is not
    padding, an answer or the image placeholder."""
    sel = has_image.bool()
    ids = input_ids[sel]
    mask = attention_mask[sel].bool() & (labels[sel] == -100) & (ids != image_token_id)
    reps = torch.tensor(crops, device=ids.device)
    with torch.no_grad():
        emb = embed_tokens(ids)
    return {"text_embeds": emb.repeat_interleave(reps, 0), "text_mask": mask.repeat_interleave(reps, 0)}


def context(wanted: tuple[str, ...], tower_out: dict, text: dict | None, generator=None) -> VTPContext:
    return VTPContext(text_embeds=(text or {}).get("text_embeds"), text_mask=(text or {}).get("text_mask"),
                      cls_attention=tower_out.get("cls_attention"), keys=tower_out.get("keys"), generator=generator)
