"""LLaVA with a pruning hook: features -> projector -> VTP -> isolator -> splice -> LLM.

The container is transformers' LlavaForConditionalGeneration (LLaVA-1.5) or
LlavaNextForConditionalGeneration (LLaVA-NeXT, "anyres"), so every exported checkpoint is an
ordinary llava-hf directory. What DualSpeed adds (the isolator, the pruning settings) lives in
`DualSpeedLlava` beside it and is saved next to the llava-hf files.

LLaVA-NeXT: an image is a base crop plus a grid of crops, N tokens each. Unpruned, the crops are
packed exactly as transformers does (grid re-assembled, padding cut off, a newline token per row),
so normal inference of a llava-hf LLaVA-NeXT checkpoint is unchanged. Pruned, each crop keeps its own
floor((1-p)*N) tokens and the crops are concatenated in order (base, then grid in raster order):
kept tokens no longer form rows, so the spatial unpad/newline merge has nothing to act on (it is
what broke the published code once crops were pruned).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches
from transformers.utils import ModelOutput

from .. import vtp
from ..data.conversation import IMAGE_TOKEN
from ..vtp.base import SOURCE_CLIP, SOURCE_LLM
from . import pdrop as pdrop_lib
from . import pmod as pmod_lib
from . import signals as signal_lib
from .clip_text import ClipText
from .isolator import ModeIsolator
from .prune import Prune

log = logging.getLogger(__name__)


@dataclass
class Forward(ModelOutput):
    """A dict subclass (ModelOutput), so DeepSpeed ZeRO-3 can find the tensors in a module's output and hook
    its backward; a plain dataclass drew its 'unknown inputs or outputs type' warning."""

    answer_logits: torch.Tensor | None = None  # [M, V] logits at the positions that predict an answer token
    targets: torch.Tensor | None = None  # [M] the answer tokens
    answer_counts: torch.Tensor | None = None  # [B] answer positions per sample (rows of answer_logits, in order)
    visual_tokens: int | None = None  # visual tokens fed to the LLM in this batch (isolator included)
    logits: torch.Tensor | None = None  # [B, T, V] when asked for
    labels: torch.Tensor | None = None  # [B, T] spliced labels when logits are asked for

    @property
    def ce(self) -> torch.Tensor:
        if self.targets.numel() == 0:
            return self.answer_logits.sum() * 0.0
        return nn.functional.cross_entropy(self.answer_logits.float(), self.targets)


class DualSpeedLlava(nn.Module):
    def __init__(self, llava: LlavaForConditionalGeneration, isolator_len: int = 4, vision_feature_layer: int | None = None,
                 isolator_init: str = "linear", max_length: int | None = None):
        super().__init__()
        self.llava = llava
        self.config = llava.config
        self.image_token_id = llava.config.image_token_index
        self.vision_feature_layer = (
            vision_feature_layer if vision_feature_layer is not None else llava.config.vision_feature_layer
        )
        self.isolator = ModeIsolator(isolator_len, llava.config.text_config.hidden_size, isolator_init)
        # training forwards cut each spliced sequence (visual tokens included) to this many tokens, as LLaVA
        # does; None leaves it whole (the text was cut before splicing)
        self.max_length = max_length
        self.train_vision = False
        self.anyres = isinstance(llava, LlavaNextForConditionalGeneration)
        self.pmod: pmod_lib.PMoD | None = None  # p-MoD routers when enabled (enable_pmod)
        # PyramidDrop's settings while it drops (enable_pdrop); no weights, so None runs the same model dense
        self.pdrop: pdrop_lib.PDrop | None = None
        # CLIP's text side for the relevance signal (attach_clip_text); a plain attribute, not a submodule
        self.clip_text: ClipText | None = None

    def enable_pmod(self, dense_above: float = 0.85, floor: float = 0.15, alpha: float = 0.2, beta: float = 1.0,
                    ratios: list | None = None) -> pmod_lib.PMoD:
        """Turn the LLM's layers into p-MoD layers per PRD (or the given ratios); routers start at zero."""
        n = self.config.text_config.num_hidden_layers
        ratios = pmod_lib.prd_ratios(n, dense_above, floor) if ratios is None else ratios
        if len(ratios) != n:
            raise ValueError(f"p-MoD needs one ratio per LLM layer ({n}), got {len(ratios)}")
        ref = self.llava.lm_head.weight
        self.pmod = pmod_lib.PMoD(self.config.text_config.hidden_size, ratios, alpha, beta).to(ref.device, ref.dtype)
        return self.pmod

    def enable_pdrop(self, layers, lam: float = 0.5) -> pdrop_lib.PDrop:
        """Drop visual tokens inside the LLM from now on: after each of `layers`, keep lam of the previous stage's."""
        if self.pmod is not None:
            raise ValueError("PyramidDrop and p-MoD cannot run in one model: both act on the LLM's layers")
        self.pdrop = pdrop_lib.PDrop(tuple(layers), float(lam)).check(self.config.text_config.num_hidden_layers)
        return self.pdrop

    def attach_clip_text(self, clip: ClipText, tokenizer) -> ClipText:
        """Score the relevance signal in CLIP's joint space from now on (see models/clip_text.py)."""
        tower = self.llava.model.vision_tower
        self.clip_text = clip.bind(tokenizer, tower.vision_model.post_layernorm, self.config.vision_config.hidden_size)
        return self.clip_text

    def signal_sources(self, signals) -> dict:
        """Where this model takes the declared signals from whose source can differ, for provenance."""
        if "relevance" not in signals:
            return {}
        if self.clip_text is None:
            return {"relevance": SOURCE_LLM}
        return {"relevance": SOURCE_CLIP, "clip_text": self.clip_text.origin}

    # -- pieces -------------------------------------------------------------------------------
    @property
    def language_model(self) -> nn.Module:
        return self.llava.model.language_model

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llava.get_input_embeddings()(ids)

    def encode_images(self, pixel_values: torch.Tensor, prune: Prune | None = None):
        """[C, 3, H, W] images or crops -> projected features [C, N, D]; with `prune`, also the tower
        signals its method declares (cls_attention [C, N], keys [C, N, Dh]), from the same pass."""
        tower = self.llava.model.vision_tower
        grad = torch.enable_grad() if (self.train_vision and self.training) else torch.no_grad()
        wanted = prune.signals if prune is not None else ()
        layer = 0
        if {"cls_attention", "keys"} & set(wanted):
            layer = signal_lib.attention_layer(self.vision_feature_layer, self.config.vision_config.num_hidden_layers,
                                                prune.plugin.signal_layer)
        with grad, signal_lib.tower_signals(tower, layer, wanted) as signals:
            out = tower(pixel_values.to(tower.dtype), output_hidden_states=True)
            feats = out.hidden_states[self.vision_feature_layer]
            if self.config.vision_feature_select_strategy == "default":
                feats = feats[:, 1:]  # drop CLS
            if "relevance" in wanted and self.clip_text is not None:
                signals["patches"] = feats.detach()  # what CLIP's visual projection maps: no second pass
        feats = self.llava.model.multi_modal_projector(feats)  # [C, N, D]
        return (feats, signals) if prune is not None else feats

    def crops_per_image(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None) -> list[int]:
        """How many crops of each image's [P_max, 3, H, W] slot are real (the rest is batch padding)."""
        if not self.anyres:
            return [1] * pixel_values.shape[0]
        if image_sizes is None or pixel_values.dim() != 5:
            raise ValueError("a LLaVA-NeXT model needs pixel_values [B_img, crops, 3, H, W] and image_sizes [B_img, 2]; "
                             "preprocess images with the checkpoint's LlavaNextImageProcessor")
        counts = [image_size_to_num_patches(sz, self.config.image_grid_pinpoints, self.config.vision_config.image_size)
                  for sz in image_sizes.tolist()]
        if max(counts) > pixel_values.shape[1]:
            raise ValueError(f"image_sizes ask for {max(counts)} crops but pixel_values hold {pixel_values.shape[1]}")
        return counts

    def visual_sequence(self, feats: torch.Tensor, prune: Prune | None, isolator: bool,
                        ctx: vtp.VTPContext | None = None, crops: list[int] | None = None,
                        image_sizes: torch.Tensor | None = None):
        """Projected features [C, N, D] of all crops -> the visual tokens fed to the LLM, per image.

        LLaVA-1.5 (one crop per image): a tensor [B_img, V, D]. LLaVA-NeXT: a list of [V_i, D].
        """
        if prune is not None:
            k = vtp.keep_count(feats.shape[1], prune.ratio)  # per crop: each crop keeps its own k
            # chosen without gradient, applied with it: the projector learns through kept and merged tokens
            feats = prune.plugin.reduce(feats.detach(), k, ctx).apply(feats)  # [C, k, D], original order
        if not self.anyres:
            return self.isolator(feats) if isolator else feats  # [B_img, (l +) V, D]
        per_image = list(feats.split(crops))
        if prune is None:
            per_image, _ = self.llava.model.pack_image_features(
                per_image, image_sizes, self.config.vision_feature_select_strategy, self.llava.model.image_newline)
        else:
            per_image = [f.flatten(0, 1) for f in per_image]  # base crop, then grid crops in raster order
        if isolator:
            per_image = [self.isolator(f[None])[0] for f in per_image]
        return per_image

    def splice(self, input_ids, attention_mask, labels, visual, has_image, pad_left: bool = False,
               max_length: int | None = None):
        """Replace each sample's single <image> placeholder by its visual tokens, then re-pad.

        input_ids/attention_mask/labels: [B, T] right-padded; visual: [B_img, V, D] in the order of
        the samples that have an image. max_length: keep each spliced sequence's first max_length tokens.
        Returns embeds [B, T'], mask [B, T'], labels [B, T'] and the visual-sequence positions [B, T'] (bool).
        """
        emb = self.embed_tokens(input_ids)
        seqs, labs, vis = [], [], []
        img = 0
        for b in range(input_ids.shape[0]):
            n = int(attention_mask[b].sum())
            ids, e, lab = input_ids[b, :n], emb[b, :n], labels[b, :n]
            is_vis = torch.zeros(n, dtype=torch.bool, device=ids.device)
            where = (ids == self.image_token_id).nonzero().flatten()
            if bool(has_image[b]):
                if where.numel() != 1:
                    raise ValueError(f"sample {b} has an image but {where.numel()} {IMAGE_TOKEN} placeholders (need 1)")
                p = int(where[0])
                v = visual[img]
                img += 1
                e = torch.cat([e[:p], v.to(e.dtype), e[p + 1:]])
                lab = torch.cat([lab[:p], lab.new_full((v.shape[0],), -100), lab[p + 1:]])
                is_vis = torch.cat([is_vis[:p], is_vis.new_ones(v.shape[0]), is_vis[p + 1:]])
            elif where.numel():
                raise ValueError(f"sample {b} has {IMAGE_TOKEN} in its text but no image")
            if max_length is not None:
                e, lab, is_vis = e[:max_length], lab[:max_length], is_vis[:max_length]
            seqs.append(e)
            labs.append(lab)
            vis.append(is_vis)
        length = max(s.shape[0] for s in seqs)
        d = emb.shape[-1]
        out = emb.new_zeros(len(seqs), length, d)
        mask = attention_mask.new_zeros(len(seqs), length)
        lab_out = labels.new_full((len(seqs), length), -100)
        vis_out = torch.zeros(len(seqs), length, dtype=torch.bool, device=emb.device)
        for b, (s, lab, v) in enumerate(zip(seqs, labs, vis)):
            sl = slice(length - s.shape[0], length) if pad_left else slice(0, s.shape[0])
            out[b, sl], mask[b, sl], lab_out[b, sl], vis_out[b, sl] = s, 1, lab, v
        return out, mask, lab_out, vis_out

    def visual_tokens(self, pixel_values, input_ids, attention_mask, labels, has_image, prune, isolator,
                      image_sizes=None):
        """Pixels -> the visual tokens of every image sample (see visual_sequence), or None without images."""
        if pixel_values is None or pixel_values.shape[0] == 0:
            return None
        crops = self.crops_per_image(pixel_values, image_sizes)
        if self.anyres:
            pixel_values = torch.cat([p[:c] for p, c in zip(pixel_values, crops)])  # drop batch-padding crops
        if prune is None:
            return self.visual_sequence(self.encode_images(pixel_values), None, isolator, None, crops, image_sizes)
        feats, tower_out = self.encode_images(pixel_values, prune)
        ctx = signal_lib.gather(self, prune, feats, tower_out, input_ids, attention_mask, labels, has_image, crops)
        return self.visual_sequence(feats, prune, isolator, ctx, crops, image_sizes)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, input_ids, attention_mask, labels, pixel_values=None, has_image=None, image_sizes=None,
                prune: Prune | None = None, isolator: bool = False, return_logits: bool = False) -> Forward:
        if has_image is None:
            has_image = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        visual = self.visual_tokens(pixel_values, input_ids, attention_mask, labels, has_image, prune, isolator,
                                    image_sizes)
        n_visual = _count(visual)
        embeds, mask, labs, vis = self.splice(input_ids, attention_mask, labels, visual, has_image,
                                              max_length=self.max_length)
        if self.pmod is not None:
            hidden, _ = pmod_lib.prefill(self.language_model, self.pmod, embeds, mask, vis)
        elif self.pdrop is not None:  # the rebuilt batch has its own labels: the kept tokens' ones
            hidden, labs, _ = pdrop_lib.forward(self.language_model, self.pdrop, embeds, mask, labs, vis)
        else:
            hidden = self.language_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
        lm_head = self.llava.lm_head
        # Only answer positions need the vocabulary projection: most of the sequence is visual
        # tokens and prompt, and [B, T, V] logits would dominate memory at 7B scale.
        ans_hidden = answer_logits(hidden, labs)
        predicts = labs[:, 1:] != -100
        fwd = Forward(lm_head(ans_hidden), labs[:, 1:][predicts], predicts.sum(1), n_visual)
        if return_logits:
            fwd.logits, fwd.labels = lm_head(hidden), labs
        return fwd

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, pixel_values=None, has_image=None, image_sizes=None,
                 prune: Prune | None = None, isolator: bool = False, max_new_tokens: int = 16, eos_token_id=None,
                 pad_token_id=None):
        """Greedy decoding of a left-padded batch; returns (new token ids [B, <=max_new_tokens], visual tokens fed)."""
        labels = torch.full_like(input_ids, -100)
        if has_image is None:
            has_image = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        visual = self.visual_tokens(pixel_values, input_ids, attention_mask, labels, has_image, prune, isolator,
                                    image_sizes)
        # splice expects right padding: move each row's tokens to the front first
        ids, mask = _left_to_right(input_ids, attention_mask)
        if self.pdrop is not None:  # PyramidDrop ranks and rebuilds right-padded sequences
            embeds, mask, _, vis = self.splice(ids, mask, labels, visual, has_image)
            out = pdrop_lib.greedy(self, self.pdrop, embeds, mask, vis, max_new_tokens, eos_token_id, pad_token_id)
            return out, _count(visual)
        embeds, mask, _, vis = self.splice(ids, mask, labels, visual, has_image, pad_left=True)
        if self.pmod is not None:  # routed prefill: each MoD layer caches only the tokens it kept
            out = pmod_lib.greedy(self, embeds, mask, vis, max_new_tokens, eos_token_id, pad_token_id)
            return out, _count(visual)
        out = self.llava.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                  do_sample=False, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
        return out, _count(visual)


def answer_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logits at the positions that predict a supervised token, in sequence order.

    logits: [B, T, V], labels: [B, T] (-100 = ignored) -> [M, V]. Fast and slow sequences differ in
    length but carry the same answer tokens in the same order, so this aligns teacher and student.
    """
    predicts = labels[:, 1:] != -100  # position t predicts label t+1
    return logits[:, :-1][predicts]


def _count(visual) -> int:
    """Visual tokens in a batch's visual sequence (a tensor [B_img, V, D] or a list of [V_i, D])."""
    if visual is None:
        return 0
    if isinstance(visual, torch.Tensor):
        return visual.shape[0] * visual.shape[1]
    return sum(v.shape[0] for v in visual)


def _left_to_right(ids: torch.Tensor, mask: torch.Tensor):
    order = torch.argsort((mask == 0).to(torch.int8), dim=1, stable=True)  # real tokens first, order kept
    return ids.gather(1, order), mask.gather(1, order)
