"""A small LLaVA-format data set from outside the synthetic generator: hand-drawn digits, 28x28 px.

    python tests/digits_data.py OUT [--n-pretrain 300 --n-sft 300 --n-eval 60]

OUT/images/*.png; OUT/pretrain.json (captions, LLaVA's pretraining format); OUT/sft.json ("which digit is
this?"); OUT/eval.json (exact match) and OUT/eval_mc.json (four choices). Digits come from a 5x7 bitmap font,
scaled 3x, placed at a random offset on a noisy background in a random ink colour: a vocabulary, image size and
answer set unlike the synthetic scenes'. Deterministic from --seed.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

FONT = {  # 5 columns x 7 rows per digit
    0: ["01110", "10001", "10011", "10101", "11001", "10001", "01110"],
    1: ["00100", "01100", "00100", "00100", "00100", "00100", "01110"],
    2: ["01110", "10001", "00001", "00010", "00100", "01000", "11111"],
    3: ["11111", "00010", "00100", "00010", "00001", "10001", "01110"],
    4: ["00010", "00110", "01010", "10010", "11111", "00010", "00010"],
    5: ["11111", "10000", "11110", "00001", "00001", "10001", "01110"],
    6: ["00110", "01000", "10000", "11110", "10001", "10001", "01110"],
    7: ["11111", "00001", "00010", "00100", "01000", "01000", "01000"],
    8: ["01110", "10001", "10001", "01110", "10001", "10001", "01110"],
    9: ["01110", "10001", "10001", "01111", "00001", "00010", "01100"],
}
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
INKS = {"crimson": (200, 30, 40), "teal": (20, 150, 150), "amber": (230, 160, 20), "white": (240, 240, 240)}
SIZE, SCALE = 28, 3


def draw(digit: int, ink: str, rng: random.Random, nrng: np.random.Generator) -> Image.Image:
    img = nrng.normal(35, 12, (SIZE, SIZE, 3))
    glyph = np.kron(np.array([[c == "1" for c in row] for row in FONT[digit]]), np.ones((SCALE, SCALE), bool))
    h, w = glyph.shape
    y, x = rng.randint(0, SIZE - h), rng.randint(0, SIZE - w)
    img[y:y + h, x:x + w][glyph] = INKS[ink]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def build(out: Path, n_pretrain: int = 300, n_sft: int = 300, n_eval: int = 60, seed: int = 0) -> dict:
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    counter = 0

    def image(prefix: str) -> tuple[str, int, str]:
        nonlocal counter
        d, ink = rng.randrange(10), rng.choice(sorted(INKS))
        name = f"{prefix}_{counter:05d}.png"
        draw(d, ink, rng, nrng).save(out / "images" / name)
        counter += 1
        return name, d, ink

    pretrain, sft, ev, mc = [], [], [], []
    for i in range(n_pretrain):
        name, d, ink = image("pre")
        cap = rng.choice([f"a handwritten {WORDS[d]} in {ink} ink", f"the numeral {WORDS[d]} drawn in {ink}",
                          f"{ink} strokes forming the digit {WORDS[d]}"])
        pretrain.append({"id": f"pre-{i}", "image": name,
                         "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": cap}]})
    for i in range(n_sft):
        name, d, _ = image("sft")
        sft.append({"id": f"sft-{i}", "image": name, "conversations": [
            {"from": "human", "value": "<image>\nWhich digit is this?"}, {"from": "gpt", "value": WORDS[d]}]})
    for i in range(n_eval):
        name, d, _ = image("eval")
        ev.append({"question": "Which digit is this?", "image": name, "answer": WORDS[d]})
        name, d, _ = image("evalmc")
        choices = sorted(rng.sample([w for w in WORDS if w != WORDS[d]], 3) + [WORDS[d]])
        mc.append({"question": "Which digit is this?", "image": name, "answer": WORDS[d], "choices": choices})
    for fname, rows in (("pretrain", pretrain), ("sft", sft), ("eval", ev), ("eval_mc", mc)):
        (out / f"{fname}.json").write_text(json.dumps(rows, indent=1))
    return {"pretrain": len(pretrain), "sft": len(sft), "eval": len(ev), "eval_mc": len(mc)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--n-pretrain", type=int, default=300)
    ap.add_argument("--n-sft", type=int, default=300)
    ap.add_argument("--n-eval", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(build(a.out, a.n_pretrain, a.n_sft, a.n_eval, a.seed))
