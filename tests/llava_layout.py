"""Small stand-ins in the real recipe's own formats, for the test of its first jobs (tests/test_real_recipe.py):

- a tiny Vicuna: a random 2-layer Llama whose tokenizer ships only `tokenizer.model` (the SentencePiece fixture,
  Vicuna v1.5's tokenizer_config.json keys), as lmsys/vicuna-7b-v1.5 does;
- a tiny CLIP vision tower with its preprocessor_config.json, as openai/clip-vit-large-patch14-336 has;
- data in LLaVA's own layouts: the 558K pretraining JSON (`<image>` after the instruction, images in numbered
  sub-folders, JPEG), the 665K SFT mix (multi-turn, images under per-source folders, text-only rows with a
  "model" key), and a benchmark in the harness's local-task format.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

FIXTURE = Path(__file__).parent / "fixtures" / "llama_sp"
COLOURS = {"red": (200, 30, 40), "blue": (30, 60, 210), "green": (30, 170, 60)}


def tiny_vicuna(out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=1, eos_token_id=2, pad_token_id=None, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    for f in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(FIXTURE / f, out / f)
    return out


def tiny_clip(out: Path, image_size: int = 84, seed: int = 0) -> Path:
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(image_size=image_size, patch_size=14, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, projection_dim=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        CLIPVisionModel(cfg).save_pretrained(out, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
                       ).save_pretrained(out)
    return out


def _image(path: Path, colour: str, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = rng.normal(120, 10, (60, 90, 3))  # wide: SFT pads it to a square, pretraining crops it
    img[15:45, 30:60] = COLOURS[colour]
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=95)


def llava_data(out: Path, n_pretrain: int = 16, n_sft: int = 16, n_eval: int = 6, seed: int = 0) -> dict:
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    names = sorted(COLOURS)
    pre, sft, ev = [], [], []
    for i in range(n_pretrain):  # blip_laion_cc_sbu_558k.json
        c, iid = rng.choice(names), f"{i:09d}"
        _image(out / "llava_pretrain" / "images" / iid[:5] / f"{iid}.jpg", c, nrng)
        pre.append({"id": iid, "image": f"{iid[:5]}/{iid}.jpg", "conversations": [
            {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
            {"from": "gpt", "value": f"a {c} square on a grey background"}]})
    for i in range(n_sft):  # llava_v1_5_mix665k.json
        c, iid = rng.choice(names), f"{i:012d}"
        if i % 4 == 3:  # ShareGPT-style text-only rows: no image, a "model" key
            sft.append({"id": f"tx{i}_0", "model": "", "conversations": [
                {"from": "human", "value": "Answer the question using a single word or phrase. Is blue a colour?"},
                {"from": "gpt", "value": "Yes"}]})
            continue
        folder = "coco/train2017" if i % 2 else "gqa/images"
        _image(out / "llava_sft" / "images" / folder / f"{iid}.jpg", c, nrng)
        sft.append({"id": iid, "image": f"{folder}/{iid}.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is the colour of the object?"},
            {"from": "gpt", "value": f"The object is {c}."},
            {"from": "human", "value": "Answer the question using a single word or phrase. Is there a person?"},
            {"from": "gpt", "value": "No"}]})
    for i in range(n_eval):
        c = names[i % len(names)]
        _image(out / "bench" / "images" / f"q{i}.jpg", c, nrng)
        ev.append({"question": "What is the colour of the object? Answer the question using a single word.",
                   "image": f"q{i}.jpg", "answer": c})
    paths = {"pretrain_json": out / "llava_pretrain" / "blip_laion_cc_sbu_558k.json",
             "pretrain_image_folder": out / "llava_pretrain" / "images",
             "sft_json": out / "llava_sft" / "llava_v1_5_mix665k.json", "image_folder": out / "llava_sft" / "images",
             "eval_json": out / "bench" / "colour.json", "eval_images": out / "bench" / "images"}
    for key, rows in (("pretrain_json", pre), ("sft_json", sft), ("eval_json", ev)):
        paths[key].write_text(json.dumps(rows, indent=1))
    return {k: str(v) for k, v in paths.items()}
