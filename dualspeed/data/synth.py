"""Synthetic multimodal data, deterministic from a seed: images, LLaVA-format JSON, eval sets, tokenizer.

Each image is a grey, slightly noisy background on a grid of patches with one to three coloured
objects, each in its own quadrant and covering `object_cells` patches. Most patches are background,
so pruning 90% of the visual tokens can keep every object - if the pruner picks well.

    python -m dualspeed.data synth --out resources/synth --seed 0

The image and patch size are the tiny model's (model.tiny in the pipeline config): the pipeline passes them.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .conversation import SYSTEM_PROMPT, prepare_tokenizer
from .synth_tasks import TASKS, write_tasks

COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (230, 210, 40), "purple": (150, 60, 190), "orange": (240, 140, 30),
}
QUADRANTS = ["top left", "top right", "bottom left", "bottom right"]
NUMBERS = ["zero", "one", "two", "three", "four"]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]


@dataclass
class SynthConfig:
    seed: int = 0
    image_size: int = 32
    patch_size: int = 4
    max_objects: int = 3
    object_cells: int = 2  # side of an object in patches; larger = less redundant background
    bg_noise: float = 0.03  # std of background noise in [0, 1] units; smaller = more redundant
    n_warmup: int = 3000
    n_pretrain: int = 3000
    n_sft: int = 6000  # questions, each about its own image, the four tasks in turn
    n_text_only: int = 300
    n_eval: int = 200  # per task
    # questions of the evaluated types per warm-up image beside its caption. 0: the warm-up plays the role of
    # CLIP's and Vicuna's own pretraining (captions and text only), and SFT is where the skills are learned
    warmup_qa: int = 0


# Colour and position questions are asked about single-object images: the tiny model then has to find
# the salient tokens rather than bind a word to one of several objects, which it cannot learn in a
# CPU-sized run (tried: presence on multi-object images stayed at chance). Count questions use one to
# max_objects objects.
SINGLE_OBJECT_TASKS = ("colour", "position", "presence")


def draw(rng: random.Random, nrng: np.random.Generator, cfg: SynthConfig, n: int | None = None):
    """One image and its scene description [(colour, quadrant), ...] in quadrant order."""
    grid = cfg.image_size // cfg.patch_size
    half = grid // 2
    if cfg.object_cells > half:
        raise ValueError(f"object_cells={cfg.object_cells} does not fit a quadrant of {half} patches")
    pix = np.clip(0.47 + cfg.bg_noise * nrng.standard_normal((cfg.image_size, cfg.image_size, 3)), 0, 1)
    n = n or rng.randint(1, cfg.max_objects)
    quads = sorted(rng.sample(range(4), n))
    colours = rng.sample(sorted(COLOURS), n)
    scene = []
    for q, c in zip(quads, colours):
        r0 = (q // 2) * half + rng.randint(0, half - cfg.object_cells)
        c0 = (q % 2) * half + rng.randint(0, half - cfg.object_cells)
        ps, oc = cfg.patch_size, cfg.object_cells
        pix[r0 * ps:(r0 + oc) * ps, c0 * ps:(c0 + oc) * ps] = np.array(COLOURS[c]) / 255.0
        scene.append((c, QUADRANTS[q]))
    return Image.fromarray((pix * 255).round().astype(np.uint8)), scene


def caption(scene) -> str:
    parts = [f"a {c} object at the {q}" for c, q in scene]
    return f"{NUMBERS[len(scene)]} objects : " + " , ".join(parts) + " ."


def question(task: str, scene, rng: random.Random) -> tuple[str, str]:
    if task == "colour":
        c, q = rng.choice(scene)
        return "What colour is the object ?", c
    if task == "count":
        return "How many objects are there ?", NUMBERS[len(scene)]
    if task == "presence":  # POPE-like yes/no
        present = [c for c, _ in scene]
        if rng.random() < 0.5:
            return f"Is there a {rng.choice(present)} object ?", "yes"
        absent = [c for c in sorted(COLOURS) if c not in present]
        return f"Is there a {rng.choice(absent)} object ?", "no"
    if task == "position":
        c, q = rng.choice(scene)
        return "Where is the object ?", q
    raise ValueError(f"unknown task {task}")


def text_only(rng: random.Random) -> tuple[str, str]:
    """Questions about the vocabulary itself: text-only samples mixed into the data."""
    kind = rng.random()
    if kind < 0.5:
        word = rng.choice(sorted(COLOURS) + QUADRANTS)
        return f"Is {word} a colour ?", "yes" if word in COLOURS else "no"
    a = rng.randint(0, 3)
    return f"What number comes after {NUMBERS[a]} ?", NUMBERS[a + 1]


def _conv(q: str, a: str, with_image: bool) -> list[dict]:
    return [{"from": "human", "value": ("<image>\n" if with_image else "") + q}, {"from": "gpt", "value": a}]


def generate(out: Path, cfg: SynthConfig) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    rng = random.Random(cfg.seed)
    nrng = np.random.default_rng(cfg.seed)
    splits: dict[str, list] = {"warmup": [], "pretrain": [], "sft": []}
    splits.update({f"eval_{t}": [] for t in TASKS})
    counter = 0

    def new_image(prefix, task=None):
        nonlocal counter
        img, scene = draw(rng, nrng, cfg, 1 if task in SINGLE_OBJECT_TASKS else None)
        name = f"images/{prefix}_{counter:06d}.png"
        img.save(out / name)
        counter += 1
        return name, scene

    total = cfg.n_warmup + cfg.n_pretrain + cfg.n_sft + cfg.n_eval * len(TASKS)  # (+ warm-up QA images)
    bar = tqdm(total=total, desc="synthesizing images", unit="img")
    for _ in range(cfg.n_warmup):
        name, scene = new_image("warmup")
        splits["warmup"].append({"id": f"warmup-{counter}", "image": name,
                                 "conversations": _conv("Describe the image .", caption(scene), True)})
        for task in rng.sample(TASKS, cfg.warmup_qa):
            qname, qscene = new_image("warmup", task)
            q, a = question(task, qscene, rng)
            splits["warmup"].append({"id": f"warmup-{counter}-{task}", "image": qname, "conversations": _conv(q, a, True)})
        bar.update()
    for _ in range(cfg.n_pretrain):
        name, scene = new_image("pretrain")
        splits["pretrain"].append({"id": f"pretrain-{counter}", "image": name,
                                   "conversations": _conv("", caption(scene), True)})
        bar.update()
    for i in range(cfg.n_sft):
        task = TASKS[i % len(TASKS)]
        name, scene = new_image("sft", task)
        q, a = question(task, scene, rng)
        splits["sft"].append({"id": f"sft-{counter}-{task}", "image": name, "conversations": _conv(q, a, True)})
        bar.update()
    for i in range(cfg.n_text_only):
        q, a = text_only(rng)
        splits["sft"].append({"id": f"text-{i}", "conversations": _conv(q, a, False)})
        splits["warmup"].append({"id": f"warmup-text-{i}", "conversations": _conv(q, a, False)})
    for task in TASKS:
        for i in range(cfg.n_eval):
            name, scene = new_image(f"eval_{task}", task)
            q, a = question(task, scene, rng)
            splits[f"eval_{task}"].append({"id": f"{task}-{i}", "image": name, "question": q, "answer": a,
                                           "conversations": _conv(q, a, True)})
            bar.update()
    bar.close()
    rng.shuffle(splits["sft"])
    rng.shuffle(splits["warmup"])
    for split, rows in splits.items():
        (out / f"{split}.json").write_text(json.dumps(rows, indent=1))
    build_tokenizer(splits, out / "tokenizer")
    write_tasks(out, TASKS)
    meta = {"config": asdict(cfg), "counts": {k: len(v) for k, v in splits.items()}}
    (out / "synth_meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def build_tokenizer(splits: dict, out: Path):
    """A word-level tokenizer over the corpus and the chat template, built offline."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    words: set[str] = set()
    texts = [SYSTEM_PROMPT, "USER : ASSISTANT :"]
    for rows in splits.values():
        for r in rows:
            texts += [t["value"].replace("<image>", " ") for t in r["conversations"]]
    for t in texts:
        words.update(w for w, _ in pre.pre_tokenize_str(t.lower()))
    vocab = {tok: i for i, tok in enumerate(SPECIALS + sorted(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", additional_special_tokens=["<image>"])
    prepare_tokenizer(fast)  # the llava-hf chat template of the training prompt, no token_type_ids
    fast.save_pretrained(out)
    return fast


def add_arguments(ap) -> None:
    ap.add_argument("--out", required=True, type=Path)
    for f, default in asdict(SynthConfig()).items():
        ap.add_argument(f"--{f.replace('_', '-')}", type=type(default), default=default)


def command(a) -> int:
    args = {f: getattr(a, f) for f in asdict(SynthConfig())}
    meta = generate(a.out, SynthConfig(**args))
    print(json.dumps(meta["counts"]))
    return 0
