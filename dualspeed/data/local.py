"""A user's own LLaVA-format data (data.kind: local): checked, and what the tiny recipe derives from it.

    python -m dualspeed.data local --out resources/<recipe> --sft-json FILE --image-folder DIR \\
        [--pretrain-json FILE --pretrain-image-folder DIR] [--task NAME=JSON::DIR ...] [--tiny] [--bad-images skip]

First the data check of every file (conversations validated, every image decoded; the training jobs check again,
from the cache), then, in --out (never beside the user's data):
  lmms_tasks/                 each --task as a local lmms-eval task (data/local_tasks.py)
  with --tiny, what the tiny recipe's stand-ins and stages read:
  clip.json                   {image, caption} pairs: each pretraining image and its caption (the CLIP stand-in)
  corpus.json                 the text alone, never an image: captions as prose, SFT conversations with <image>
                              taken out as chats (the LLM stand-in)
  tokenizer/, clip_tokenizer/ one word-level vocabulary over everything the model reads: pretraining, SFT and
                              evaluation text; no word of it is unknown
  local_meta.json             counts, the vocabulary size and the unknown words (none), written last
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from ..provenance import write_json
from . import vocab
from .check import check_data
from .conversation import IMAGE_TOKEN
from .corpus import repeat_document
from .local_tasks import read_task, task_texts, write_tasks
from .samples import DataError


def checked(json_path, folder, bad_images: str, key: str) -> list[dict]:
    """The usable rows of one data file; a bad sample fails the job (naming the key, the file and the sample) or,
    with bad_images=skip, is left out here as the training job leaves it out."""
    try:
        rows, problems = check_data(json_path, folder)
    except DataError as e:
        raise DataError(f"{key}: {e}") from None
    if problems and bad_images != "skip":
        lines = "\n".join(p.line() for p in problems[:50])
        raise DataError(f"{key} ({json_path}): {len(problems)} of {len(rows)} samples are unusable:\n{lines}\n"
                        "Fix or remove them, or set data.bad_images: skip to train without them.")
    bad = {p.index for p in problems}
    if len(bad) == len(rows):
        lines = "\n".join(p.line() for p in problems[:5])
        raise DataError(f"{key} ({json_path}): all {len(rows)} samples are unusable, so data.bad_images: skip leaves "
                        f"nothing to train on; the first:\n{lines}")
    print(f"[data] {key} {json_path}: {len(rows)} samples, {len(problems)} bad"
          + (" (skipped)" if problems else ""), file=sys.stderr)
    return [r for i, r in enumerate(rows) if i not in bad]


def caption_of(row: dict) -> str:
    """A pretraining sample's caption: its first answer (LLaVA's plain template trains on it alone)."""
    return row["conversations"][1]["value"].strip()


def without_image(conversations: list[dict]) -> list[dict] | None:
    """A conversation with <image> taken out, as text an LLM reads; None when a human turn is left empty."""
    out = [{**t, "value": " ".join(t["value"].replace(IMAGE_TOKEN, " ").split())} for t in conversations]
    return None if any(not t["value"] for t in out) else out


def corpus(pretrain: list[dict], sft: list[dict], seed: int = 0) -> list[dict]:
    docs = [{"kind": "prose", "text": caption_of(r)} for r in pretrain]
    for r in sft:
        conv = without_image(r["conversations"])
        if conv:
            docs.append({"kind": "chat", "conversations": conv})
    # runs of the data's own words, twice, one per three documents: what the LLM stand-in reads first
    # (standins.llm.train.copy_steps) to learn to look back and copy, as it does on the synthetic corpus
    rng = random.Random(seed)
    words = sorted({w for d in docs for w in (d.get("text") or " ".join(t["value"] for t in d["conversations"])).split()})
    docs += [repeat_document(rng, lambda: rng.choice(words)) for _ in range(len(docs) // 2)]
    return docs


def texts(pretrain: list[dict], sft: list[dict], tasks: dict[str, list[dict]]) -> list[str]:
    out = [t["value"] for r in pretrain + sft for t in r["conversations"]]
    return out + [t for rows in tasks.values() for t in task_texts(rows)]


def task_images_checked(name: str, rows: list[dict], folder: str) -> None:
    from .check import check_images
    from .samples import image_path_problem

    for i, r in enumerate(rows):
        why = image_path_problem(r["image"], Path(folder))
        if why:
            raise DataError(f"eval.local_tasks.{name}: row #{i}: {why}")
    paths = [str(Path(folder) / r["image"]) for r in rows]
    verdict = check_images(paths, progress=False)
    bad = [f"row #{i}: {verdict[p]} [{p}]" for i, p in enumerate(paths) if verdict[p]]
    if bad:
        raise DataError(f"eval.local_tasks.{name}: {len(bad)} of {len(rows)} rows are unusable:\n" + "\n".join(bad[:50]))


def prepare(out: Path, sft_json, image_folder, pretrain_json=None, pretrain_image_folder=None,
            tasks: dict[str, tuple[str, str]] | None = None, tiny: bool = False, bad_images: str = "fail") -> dict:
    tasks = tasks or {}
    task_rows = {}
    for name, (path, folder) in tasks.items():
        try:
            task_rows[name] = read_task(name, path, folder)
        except ValueError as e:
            raise DataError(str(e)) from None
        task_images_checked(name, task_rows[name], folder)
    pretrain = checked(pretrain_json, pretrain_image_folder or image_folder, bad_images, "data.pretrain_json") \
        if pretrain_json else []
    sft = checked(sft_json, image_folder, bad_images, "data.sft_json")
    out.mkdir(parents=True, exist_ok=True)
    meta = {"counts": {"pretrain": len(pretrain), "sft": len(sft)},
            "tasks": write_tasks(out / "lmms_tasks", task_rows, {n: f for n, (_, f) in tasks.items()})}
    if tiny:
        if not pretrain:
            raise DataError("data.pretrain_json: the tiny model needs pretraining data: its CLIP stand-in learns from "
                            "the pretraining images and their captions")
        clip = [{"image": r["image"], "caption": caption_of(r)} for r in pretrain if "image" in r]
        docs = corpus(pretrain, sft)
        write_json(out / "clip.json", clip, indent=None)
        write_json(out / "corpus.json", docs, indent=None)
        every = texts(pretrain, sft, task_rows)
        n = vocab.build(every, out / "tokenizer", out / "clip_tokenizer")
        from transformers import AutoTokenizer

        unknown = vocab.unknown_words(AutoTokenizer.from_pretrained(out / "tokenizer"), every)
        if unknown:  # cannot happen with a vocabulary built from these texts; a tokenizer change would show here
            raise DataError(f"the tokenizer built from the data maps {len(unknown)} words to <unk>: {sorted(unknown)[:20]}")
        meta["counts"].update(clip=len(clip), corpus=len(docs))
        meta.update(vocabulary=n, unknown_words=len(unknown), texts=len(every))
        print(f"[data] tokenizer: {n} tokens over {len(every)} texts (pretraining, SFT, evaluation); "
              f"{len(unknown)} unknown words", file=sys.stderr)
    write_json(out / "local_meta.json", meta)  # last: its presence marks a finished preparation
    return meta


def parse_task(spec: str) -> tuple[str, tuple[str, str]]:
    name, _, rest = spec.partition("=")
    path, sep, folder = rest.partition("::")
    if not (name and path and sep and folder):
        raise ValueError(f"--task {spec!r}: expected NAME=JSON::IMAGE_FOLDER")
    return name, (path, folder)


def add_arguments(ap) -> None:
    ap.add_argument("--out", required=True, type=Path, help="where derived files go (the recipe's data.root)")
    ap.add_argument("--sft-json", required=True)
    ap.add_argument("--image-folder", required=True)
    ap.add_argument("--pretrain-json", default="")
    ap.add_argument("--pretrain-image-folder", default="")
    ap.add_argument("--task", action="append", default=[], help="NAME=JSON::IMAGE_FOLDER, one per local task")
    ap.add_argument("--tiny", action="store_true", help="also derive the tiny recipe's stand-in data and tokenizer")
    ap.add_argument("--bad-images", choices=["fail", "skip"], default="fail")


def command(a) -> int:
    try:
        meta = prepare(a.out, a.sft_json, a.image_folder, a.pretrain_json or None, a.pretrain_image_folder or None,
                       dict(parse_task(t) for t in a.task), a.tiny, a.bad_images)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(meta))
    return 0
