"""LLaVA-format conversations: validation, prompt templates, tokenisation with answer-only labels, collation."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from .config import ASPECT_RATIOS

IMAGE_TOKEN = "<image>"
SYSTEM_PROMPT = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")
IGNORE = -100


class DataError(ValueError):
    pass


def sample_problem(s, image_folder: Path) -> str | None:
    """What is wrong with one sample's structure, text or image path (the file is not opened), or None."""
    if not isinstance(s, dict):
        return f"expected an object, got {type(s).__name__}"
    conv = s.get("conversations")
    if not isinstance(conv, list) or len(conv) < 2 or len(conv) % 2:
        return "'conversations' must be a list of human/gpt turn pairs"
    for t, turn in enumerate(conv):
        want = "human" if t % 2 == 0 else "gpt"
        if not isinstance(turn, dict) or turn.get("from") != want or not isinstance(turn.get("value"), str):
            return f"turn {t} must be {{'from': '{want}', 'value': <str>}}, got {turn!r}"
        if want == "gpt" and not turn["value"].strip():
            return f"turn {t} is an empty answer: it would train the model to stop at once"
    n_img = sum(turn["value"].count(IMAGE_TOKEN) for turn in conv)
    if "image" not in s:
        return f"text has {IMAGE_TOKEN} but the sample has no 'image'" if n_img else None
    if n_img != 1:
        return f"has an image but {n_img} {IMAGE_TOKEN} placeholders (need exactly 1)"
    return image_path_problem(s["image"], image_folder)


def image_path_problem(rel, image_folder: Path) -> str | None:
    """A sample's image must be a relative path that stays inside the image folder; anything else
    (an absolute path, enough '../') is never opened."""
    if not isinstance(rel, str) or not rel:
        return f"'image' must be a non-empty relative path, got {rel!r}"
    if os.path.isabs(rel):
        return f"image '{rel}' is an absolute path; image paths are relative to the image folder"
    # string checks only: this runs for every sample of 665K-sample files, and resolving each path
    # on a network file system costs more than the whole rest of the check
    norm = os.path.normpath(rel)
    if norm == ".." or norm.startswith("../"):
        return f"image '{rel}' leaves the image folder {image_folder}"
    return None


def validate_samples(rows, json_path: Path, image_folder: Path) -> None:
    """Fail before training on the first malformed sample, naming the file and the sample.
    (`python -m dualspeed.data check` also opens every image and lists every bad sample.)"""
    if not isinstance(rows, list):
        raise DataError(f"{json_path}: expected a JSON list of samples, got {type(rows).__name__}")
    for i, s in enumerate(rows):
        sid = s.get("id", "?") if isinstance(s, dict) else "?"
        problem = sample_problem(s, image_folder)
        if problem is None and "image" in s and not (image_folder / s["image"]).is_file():
            problem = f"image '{s['image']}' not found under {image_folder}"
        if problem:
            raise DataError(f"{json_path}: sample #{i} (id={sid}): {problem}")


def read_rows(json_path: str | Path) -> list:
    json_path = Path(json_path)
    if not json_path.is_file():
        raise DataError(f"data file {json_path} does not exist")
    try:
        rows = json.loads(json_path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{json_path}: not valid JSON ({e})") from None
    if not isinstance(rows, list):
        raise DataError(f"{json_path}: expected a JSON list of samples, got {type(rows).__name__}")
    return rows


def load_samples(json_path: str | Path, image_folder: str | Path) -> list[dict]:
    rows = read_rows(json_path)
    validate_samples(rows, Path(json_path), Path(image_folder))
    return rows


def _encode(tokenizer, text: str) -> list[int]:
    """Tokenise text, mapping each <image> to the image token id whatever the tokenizer does with it."""
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    ids: list[int] = []
    for j, piece in enumerate(text.split(IMAGE_TOKEN)):
        if j:
            ids.append(image_id)
        if piece.strip():
            ids += tokenizer(piece, add_special_tokens=False).input_ids
    return ids


def image_first(conversations: list[dict]) -> list[dict]:
    """LLaVA's placement: <image> taken out of the turn that holds it and put first, then a newline."""
    out = []
    for turn in conversations:
        v = turn["value"]
        if IMAGE_TOKEN in v:
            v = (IMAGE_TOKEN + "\n" + v.replace(IMAGE_TOKEN, "").strip()).strip()
        out.append({**turn, "value": v})
    return out


def build_prompt(tokenizer, conversations: list[dict], template: str, for_generation: bool = False,
                 plain_end: str = "newline"):
    """-> (input_ids, labels) with labels set on answer tokens (and their end token) only.

    vicuna_v1: "<system> USER: <q> ASSISTANT: <a></s>USER: ..." (LLaVA-1.5's SFT template)
    plain:     "<image><caption>\n" (LLaVA's pretraining template: the human text is dropped; the caption
               ends in LLaVA's plain separator "\n", or in </s> with plain_end="eos")
    for_generation: drop the last answer and end on the assistant cue.
    """
    ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    labels = [IGNORE] * len(ids)
    eos = tokenizer.eos_token_id
    turns = conversations[:-1] if for_generation else conversations
    if template == "plain":
        prompt = _encode(tokenizer, IMAGE_TOKEN if IMAGE_TOKEN in conversations[0]["value"] else "")
        ids += prompt
        labels += [IGNORE] * len(prompt)
        if not for_generation:
            if plain_end == "newline":  # tokenised with the caption, as LLaVA does: "\n" may merge with its end
                ans = _encode(tokenizer, conversations[1]["value"] + "\n")
            elif plain_end == "eos":
                ans = _encode(tokenizer, conversations[1]["value"]) + [eos]
            else:
                raise ValueError(f"unknown plain_end {plain_end!r}; expected newline or eos")
            ids += ans
            labels += ans
        return ids, labels
    if template != "vicuna_v1":
        raise ValueError(f"unknown template {template!r}")
    for t in range(0, len(turns), 2):
        head = (SYSTEM_PROMPT + " " if t == 0 else "") + "USER: " + turns[t]["value"] + " ASSISTANT:"
        p = _encode(tokenizer, head)
        ids += p
        labels += [IGNORE] * len(p)
        if t + 1 < len(turns):
            a = _encode(tokenizer, " " + turns[t + 1]["value"]) + [eos]
            ids += a
            labels += a
    return ids, labels


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


class LlavaDataset(Dataset):
    def __init__(self, json_path, image_folder, tokenizer, processor, template="vicuna_v1", max_length=2048,
                 image_aspect_ratio=None, plain_end="newline", image_first=True, rows: list[dict] | None = None):
        image_aspect_ratio = image_aspect_ratio or default_aspect(processor)
        check_aspect(processor, image_aspect_ratio)
        # rows: samples already checked (dualspeed.data_check); otherwise read and validated here
        self.rows = rows if rows is not None else load_samples(json_path, image_folder)
        self.image_folder = Path(image_folder)
        self.tokenizer, self.processor = tokenizer, processor
        self.template, self.max_length = template, max_length
        self.image_aspect_ratio, self.plain_end, self.image_first = image_aspect_ratio, plain_end, image_first

    def __len__(self):
        return len(self.rows)

    def modality_lengths(self) -> list[int]:
        """Words per sample (LLaVA's cheap length proxy), negative for text-only samples."""
        out = []
        for s in self.rows:
            n = max(1, sum(len(t["value"].split()) for t in s["conversations"]))
            out.append(n if "image" in s else -n)
        return out

    def __getitem__(self, i):
        s = self.rows[i]
        conv = image_first(s["conversations"]) if self.image_first else s["conversations"]
        ids, labels = build_prompt(self.tokenizer, conv, self.template, plain_end=self.plain_end)
        # the text alone is cut here as LLaVA's collator does; with truncate=spliced the model cuts again
        # once the visual tokens are in (DualSpeedLlava.max_length)
        ids, labels = ids[: self.max_length], labels[: self.max_length]
        item = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}
        if "image" in s:
            try:
                item.update(load_image(self.image_folder / s["image"], self.processor, self.image_aspect_ratio))
            except (OSError, ValueError) as e:  # a file that changed or broke after the pre-run check
                raise DataError(f"sample #{i} (id={s.get('id', '?')}): cannot read image "
                                f"{self.image_folder / s['image']}: {e}") from e
        return item


@dataclass
class Collator:
    pad_token_id: int

    def __call__(self, items: list[dict]) -> dict:
        n = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), n), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), n), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(items), n), dtype=torch.long)
        for b, it in enumerate(items):
            L = len(it["input_ids"])
            ids[b, :L], mask[b, :L], labels[b, :L] = it["input_ids"], 1, it["labels"]
        has_image = torch.tensor(["pixel_values" in it for it in items])
        images = stack_images([it for it in items if "pixel_values" in it])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "has_image": has_image, **images}


def main(argv=None):
    """`python -m dualspeed.data check --json FILE --image-folder DIR`: the pre-run data check."""
    from .data_check import main as check_main

    return check_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
