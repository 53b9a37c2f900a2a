"""transformers' vmap-built causal mask against the broadcast one (models/causal_mask.py), side by side in one process.

    python -m dualspeed.bench masks                  # the tiny SFT (LoRA) and pretraining steps, bf16, 1 thread

Each round runs one step of each case with each mask builder, alternating, so drift in machine load hits both alike.
The two builders give the same mask (tests/test_causal_mask.py), so the steps compute the same numbers; only the
time to build the mask differs.
"""
from __future__ import annotations

import json
import statistics
import time

import torch
from transformers import set_seed

from ..models import causal_mask
from .preset_model import batch, build
from .presets import PRESETS
from .step_time import step

CASES = {"sft": "lora", "pretrain": "frozen"}


def run(rounds: int, burn_in: int, batch_size: int, text: int) -> dict:
    setups = {}
    for case, llm in CASES.items():
        p = {**PRESETS["tiny"], "llm": llm, "batch": batch_size, "text": text, "lora_r": 16}
        model = build(p, "cpu", torch.float32)
        opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-5)
        inputs = batch(p, "cpu", torch.float32, torch.Generator().manual_seed(0))
        inputs["attention_mask"][0, -2:] = 0  # one padded sample, as every length-grouped batch has: a mask is built
        setups[case] = (model, opt, inputs)
    times = {(c, b): [] for c in CASES for b in ("vmap", "broadcast")}
    try:
        for i in range(burn_in + rounds):
            for case, (model, opt, inputs) in setups.items():
                for builder in ("vmap", "broadcast"):
                    causal_mask.install() if builder == "broadcast" else causal_mask.uninstall()
                    t0 = time.perf_counter()
                    step(model, opt, inputs, "full", None, False, cpu_bf16_autocast=True)
                    if i >= burn_in:
                        times[case, builder].append(time.perf_counter() - t0)
    finally:
        causal_mask.install()
    out = {"threads": torch.get_num_threads(), "batch": batch_size, "text_tokens": text, "rounds": rounds, "cases": {}}
    for case in CASES:
        old, new = statistics.median(times[case, "vmap"]), statistics.median(times[case, "broadcast"])
        out["cases"][case] = {"step_ms": {"vmap": round(old * 1e3, 2), "broadcast": round(new * 1e3, 2)},
                              "broadcast_over_vmap": round(new / old, 3)}
    return out


def add_arguments(ap) -> None:
    ap.add_argument("--rounds", type=int, default=30, help="timed rounds (one step of every case with each builder)")
    ap.add_argument("--burn-in", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8, help="samples per step (the tiny default's batch)")
    ap.add_argument("--text", type=int, default=40, help="text tokens per sample besides the image's")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")


def command(a) -> int:
    torch.set_num_threads(a.threads)
    set_seed(0)
    text = json.dumps(run(a.rounds, a.burn_in, a.batch, a.text), indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return 0
