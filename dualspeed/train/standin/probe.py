"""What the LLM stand-in can do in words, before it ever meets a projector: each task asked of scenes described in
text, and how much of a repeated run of colour words it copies.

    python -m dualspeed.train.standin.probe runs/tiny/standins/llm/hf [--n 100] [--seed 123]

Scenes of one to four objects drawn with a seed of its own (the corpus's is the synthetic data's), each described in
one of the corpus's wordings and asked one question in the vicuna_v1 prompt; greedy answers, exact match. Copying:
a run of 8 to 20 colour words, then its first three again; the share of the last two the LLM predicts.
"""
from __future__ import annotations

import json
import random

import torch

from ... import cli


def probe(hf: str, n: int = 100, seed: int = 123) -> dict:
    from transformers import AutoModelForCausalLM

    from ...data.conversation import build_prompt
    from ...data.scenes import COLOURS, TASKS, SceneConfig, describe, question, random_scene
    from ...models.tokenizer import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(hf).eval()
    tok = load_tokenizer(hf)
    rng, scenes = random.Random(seed), SceneConfig()
    out = {}
    with torch.no_grad():
        for task in TASKS:
            right = 0
            for _ in range(n):
                scene = random_scene(rng, scenes)
                q, a = question(task, scene, rng)
                conv = [{"from": "human", "value": f"{describe(scene, rng)} {q}"}, {"from": "gpt", "value": ""}]
                ids, _ = build_prompt(tok, conv, "vicuna_v1", for_generation=True)
                gen = model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False,
                                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
                right += tok.decode(gen[0, len(ids):], skip_special_tokens=True).strip() == a
            out[task] = round(100 * right / n, 1)
        copied = 0
        for _ in range(n):
            run = [rng.choice(sorted(COLOURS)) for _ in range(rng.randint(8, 20))]
            ids = tok(" ".join(run + run[:3]), add_special_tokens=True).input_ids
            pred = model(torch.tensor([ids])).logits[0].argmax(-1).tolist()
            copied += sum(pred[i - 1] == ids[i] for i in (len(ids) - 2, len(ids) - 1))
        out["copies_%"] = round(100 * copied / (2 * n), 1)
    return out


def main(argv=None) -> int:
    ap = cli.ArgumentParser(prog="python -m dualspeed.train.standin.probe", description=__doc__)
    ap.add_argument("hf", help="the LLM stand-in's hf/ folder (its tokenizer is there too)")
    ap.add_argument("--n", type=int, default=100, help="questions a task, and runs to copy")
    ap.add_argument("--seed", type=int, default=123)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(json.dumps(probe(a.hf, a.n, a.seed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
