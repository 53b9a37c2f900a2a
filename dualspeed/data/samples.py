"""A LLaVA-format data file: reading it, and what is wrong with a sample's structure, text or image path."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .conversation import IMAGE_TOKEN


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
