"""Images as LLaVA preprocesses them: padded to a square, center-cropped or tiled into anyres crops, then batched."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ..config import ASPECT_RATIOS
from .samples import DataError


def expand_to_square(im: Image.Image, fill: tuple) -> Image.Image:
    """The image centred on a square canvas of its longer side (LLaVA's expand2square)."""
    w, h = im.size
    if w == h:
        return im
    side = max(w, h)
    canvas = Image.new(im.mode, (side, side), fill)
    canvas.paste(im, ((side - w) // 2, (side - h) // 2))
    return canvas


def is_anyres(processor) -> bool:
    return getattr(processor, "image_grid_pinpoints", None) is not None


def default_aspect(processor) -> str:
    """LLaVA's own choice for a processor: anyres for LLaVA-NeXT's, pad (LLaVA-1.5 SFT and evaluation) otherwise."""
    return "anyres" if is_anyres(processor) else "pad"


def check_aspect(processor, image_aspect_ratio: str) -> None:
    """anyres needs LLaVA-NeXT's processor, pad and crop a single-crop one: fail before any image is read."""
    if image_aspect_ratio not in ASPECT_RATIOS:
        raise DataError(f"image_aspect_ratio must be pad, crop or anyres, got {image_aspect_ratio!r}")
    if is_anyres(processor) != (image_aspect_ratio == "anyres"):
        kind = "LLaVA-NeXT (anyres)" if is_anyres(processor) else "single-crop (LLaVA-1.5)"
        raise DataError(f"data.image_aspect_ratio is '{image_aspect_ratio}' but the model's image processor is "
                        f"{kind}: set anyres for a LLaVA-NeXT model, pad or crop for LLaVA-1.5")

def process_image(im: Image.Image, processor, image_aspect_ratio: str | None = None) -> dict:
    """-> {"pixel_values": [3, H, W]} (LLaVA-1.5), or [crops, 3, H, W] plus "image_sizes" [2] (LLaVA-NeXT anyres).

    pad keeps the whole image (the processor's center crop then cuts nothing); crop leaves the processor's
    resize + center crop to cut the sides of a non-square image; anyres is the NeXT processor's own tiling.
    None: default_aspect(processor).
    """
    image_aspect_ratio = image_aspect_ratio or default_aspect(processor)
    check_aspect(processor, image_aspect_ratio)
    im = im.convert("RGB")
    if image_aspect_ratio == "pad":
        im = expand_to_square(im, tuple(int(x * 255) for x in processor.image_mean))
    out = processor(images=im, return_tensors="pt")
    item = {"pixel_values": out["pixel_values"][0]}
    if "image_sizes" in out:
        item["image_sizes"] = torch.as_tensor(out["image_sizes"][0])
    return item


def load_image(path: Path, processor, image_aspect_ratio: str | None = None) -> dict:
    with Image.open(path) as im:
        return process_image(im, processor, image_aspect_ratio)


def stack_images(items: list[dict]) -> dict:
    """Batch processed images; anyres crop stacks are zero-padded to the most crops in the batch
    (the model reads each image's real crop count from image_sizes)."""
    pix = [it["pixel_values"] for it in items]
    if not pix:
        return {"pixel_values": None}
    if pix[0].dim() == 3:
        return {"pixel_values": torch.stack(pix)}
    most = max(p.shape[0] for p in pix)
    padded = torch.zeros(len(pix), most, *pix[0].shape[1:], dtype=pix[0].dtype)
    for i, p in enumerate(pix):
        padded[i, :p.shape[0]] = p
    return {"pixel_values": padded, "image_sizes": torch.stack([it["image_sizes"] for it in items])}
