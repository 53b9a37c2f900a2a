"""The synthetic data set, deterministic from a seed: what each stand-in and each stage of the tiny recipe reads.

    python -m dualspeed.data synth --out resources/synth --seed 0

  clip.json      image-caption pairs: the tiny CLIP's contrastive pretraining (images alone, with their words)
  corpus.json    text documents, never an image: the tiny LLM's pretraining (data/corpus.py)
  pretrain.json  LLaVA stage 1: captions (plain template)
  sft.json       LLaVA stage 2: a question about each image, the tasks in turn, and text-only questions
  eval_<task>.json, lmms_tasks/   the held-out questions, also as local lmms-eval tasks
  tokenizer/, clip_tokenizer/     one word-level vocabulary over all of the above (data/vocab.py)

Every split draws its own images. The image and patch size are the tiny model's (model.tiny in the pipeline
config): the pipeline passes them.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import vocab
from .corpus import CorpusConfig, corpus
from .scenes import SceneConfig, caption, draw, question, text_only
from .synth_tasks import TASKS, write_tasks


@dataclass
class SynthConfig(SceneConfig, CorpusConfig):
    seed: int = 0
    n_clip: int = 6000  # image-caption pairs for the CLIP stand-in
    n_corpus: int = 20000  # text documents for the LLM stand-in
    n_pretrain: int = 3000
    n_sft: int = 6000  # questions, each about its own image, the tasks in turn
    n_text_only: int = 300
    n_eval: int = 200  # per task


def _conv(q: str, a: str, with_image: bool) -> list[dict]:
    return [{"from": "human", "value": ("<image>\n" if with_image else "") + q}, {"from": "gpt", "value": a}]


def generate(out: Path, cfg: SynthConfig) -> dict:
    cfg.check()
    out.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    rng = random.Random(cfg.seed)
    nrng = np.random.default_rng(cfg.seed)
    single = cfg.single()
    splits: dict[str, list] = {"clip": [], "pretrain": [], "sft": []} | {f"eval_{t}": [] for t in TASKS}
    counter = 0
    bar = tqdm(total=cfg.n_clip + cfg.n_pretrain + cfg.n_sft + cfg.n_eval * len(TASKS), desc="synthesizing images",
               unit="img")

    def new_image(prefix: str, task: str | None = None):
        nonlocal counter
        img, scene = draw(rng, nrng, cfg, 1 if task in single else None)
        name = f"images/{prefix}_{counter:06d}.png"
        img.save(out / name)
        counter += 1
        bar.update()
        return name, scene

    for _ in range(cfg.n_clip):
        name, scene = new_image("clip")
        splits["clip"].append({"image": name, "caption": caption(scene)})
    for _ in range(cfg.n_pretrain):
        name, scene = new_image("pretrain")
        splits["pretrain"].append({"id": f"pretrain-{counter}", "image": name, "conversations": _conv("", caption(scene), True)})
    for i in range(cfg.n_sft):
        task = TASKS[i % len(TASKS)]
        name, scene = new_image("sft", task)
        q, a = question(task, scene, rng)
        splits["sft"].append({"id": f"sft-{counter}-{task}", "image": name, "conversations": _conv(q, a, True)})
    for i in range(cfg.n_text_only):
        q, a = text_only(rng)
        splits["sft"].append({"id": f"text-{i}", "conversations": _conv(q, a, False)})
    for task in TASKS:
        for i in range(cfg.n_eval):
            name, scene = new_image(f"eval_{task}", task)
            q, a = question(task, scene, rng)
            splits[f"eval_{task}"].append({"id": f"{task}-{i}", "image": name, "question": q, "answer": a,
                                           "conversations": _conv(q, a, True)})
    bar.close()
    rng.shuffle(splits["sft"])
    splits["corpus"] = corpus(cfg.n_corpus, cfg.seed + 1, cfg, cfg)
    for split, rows in splits.items():
        (out / f"{split}.json").write_text(json.dumps(rows, indent=None if split == "corpus" else 1))
    n_vocab = vocab.build(texts(splits), out / "tokenizer", out / "clip_tokenizer")
    write_tasks(out, TASKS)
    meta = {"config": asdict(cfg), "counts": {k: len(v) for k, v in splits.items()}, "vocabulary": n_vocab}
    (out / "synth_meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def texts(splits: dict) -> list[str]:
    """All the words of a data set: conversations, captions, corpus documents."""
    out = []
    for rows in splits.values():
        for r in rows:
            out += [t["value"] for t in r.get("conversations", [])] + [r[k] for k in ("caption", "text") if k in r]
    return out


def add_arguments(ap) -> None:
    ap.add_argument("--out", required=True, type=Path)
    for f in fields(SynthConfig):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)


def command(a) -> int:
    meta = generate(a.out, SynthConfig(**{f.name: getattr(a, f.name) for f in fields(SynthConfig)}))
    print(json.dumps(meta["counts"]))
    return 0
