"""The CLIP stand-in: a tiny CLIPModel trained contrastively on image-caption pairs, as CLIP is, never an LLM.

Its vision tower becomes LLaVA's (frozen, features from its penultimate layer, as LLaVA reads CLIP's); its text
tower scores CDPruner's instruction relevance, as CLIP's does. Captions repeat across images (a few colours and
places), so every pair with the same caption counts as a positive of the contrastive loss, not a negative.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoTokenizer

from ...models.build import tiny_image_processor
from ...models.standins import TEXT_POSITIONS, new_clip
from .config import StandinConfig
from .loop import fit


def read_pairs(cfg: StandinConfig, processor, tokenizer):
    rows = json.loads(Path(cfg.data).read_text())
    if not rows or not all(isinstance(r, dict) and {"image", "caption"} <= r.keys() for r in rows):
        raise ValueError(f"{cfg.data}: expected a non-empty JSON list of {{'image', 'caption'}} pairs")
    folder = Path(cfg.image_folder)
    pixels = []
    for r in rows:
        with Image.open(folder / r["image"]) as im:
            pixels.append(processor(images=im.convert("RGB"), return_tensors="pt")["pixel_values"][0])
    text = tokenizer([r["caption"] for r in rows], padding=True, truncation=True, max_length=TEXT_POSITIONS,
                     return_tensors="pt")
    ids = {c: i for i, c in enumerate(sorted({r["caption"] for r in rows}))}
    return torch.stack(pixels), text, torch.tensor([ids[r["caption"]] for r in rows])


def contrastive_loss(model, batch) -> torch.Tensor:
    pixels, input_ids, mask, caption_ids = batch
    logits = model(input_ids=input_ids, attention_mask=mask, pixel_values=pixels).logits_per_image  # [B, B]
    same = (caption_ids[:, None] == caption_ids[None]).float()
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (-(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.T.log_softmax(1)).sum(1).mean())


def train(cfg: StandinConfig, out: Path) -> tuple[dict, dict]:
    t = cfg.train
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
    if tokenizer("a").input_ids[-1] != tokenizer.eos_token_id:
        raise ValueError(f"{cfg.tokenizer}: CLIP's text tower pools the state of </s>; use a tokenizer that ends a text "
                         "with it (data/vocab.py writes clip_tokenizer/ beside tokenizer/)")
    processor = tiny_image_processor(cfg.tiny.image_size)
    pixels, text, caption_ids = read_pairs(cfg, processor, tokenizer)
    model = new_clip(cfg.tiny, tokenizer, t.seed)
    n = len(caption_ids)
    per_epoch = max(1, n // t.batch_size)
    total = t.max_steps if t.max_steps > 0 else max(1, round(t.epochs * per_epoch))
    gen = torch.Generator().manual_seed(t.seed)

    def batches():
        while True:
            order = torch.randperm(n, generator=gen)
            for b in range(per_epoch):
                i = order[b * t.batch_size:(b + 1) * t.batch_size]
                yield pixels[i], text.input_ids[i], text.attention_mask[i], caption_ids[i]

    stats = fit(model, batches(), contrastive_loss, total, t, out, "CLIP stand-in (contrastive)")
    hf = out / "hf"
    model.save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    processor.save_pretrained(hf)
    saw = {"image_caption_pairs": n, "distinct_captions": int(caption_ids.max()) + 1, "language_model": None}
    return stats, saw
