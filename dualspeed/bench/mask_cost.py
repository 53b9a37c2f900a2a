"""transformers' vmap-built causal mask against the broadcast one (models/causal_mask.py), side by side in one process.

    python -m dualspeed.bench masks                  # the tiny SFT (LoRA) and pretraining steps, bf16, 1 thread

Each round runs one step of each case with each mask builder, alternating, so drift in machine load hits both alike.
The two builders give the same mask (tests/test_causal_mask.py), so the steps compute the same numbers; only the
time to build the mask differs.
"""
from __future__ import annotations

import statistics
import time

import torch

from ..models import causal_mask
from . import precision
from .step_time import step

CASES = precision.CASES


def run(rounds: int, burn_in: int, batch_size: int, lora_r: int, text: int) -> dict:
    setups = {}
    for case, llm in CASES.items():
        model, opt, inputs = precision.tiny_case(llm, batch_size, lora_r, text)
        inputs["attention_mask"][0, -2:] = 0  # one padded sample, as every length-grouped batch has: a mask is built
        setups[case] = (model, opt, inputs)
    times = {(c, b): [] for c in CASES for b in ("vmap", "broadcast")}
    try:
        for i in range(burn_in + rounds):
            for case, (model, opt, inputs) in setups.items():
                for builder in ("vmap", "broadcast"):
                    if builder == "broadcast":
                        causal_mask.install()
                    else:
                        causal_mask.uninstall()
                    t0 = time.perf_counter()
                    step(model, opt, inputs, "full", None, False, cpu_bf16_autocast=True)
                    if i >= burn_in:
                        times[case, builder].append(time.perf_counter() - t0)
    finally:
        causal_mask.install()  # as build() left it, and every training process has it
    out = {"threads": torch.get_num_threads(), "batch": batch_size, "text_tokens": text, "lora_r": lora_r, "rounds": rounds,
           "cases": {}}
    for case in CASES:
        old, new = statistics.median(times[case, "vmap"]), statistics.median(times[case, "broadcast"])
        out["cases"][case] = {"step_ms": {"vmap": round(old * 1e3, 2), "broadcast": round(new * 1e3, 2)},
                              "broadcast_over_vmap": round(new / old, 3)}
    return out


def add_arguments(ap) -> None:
    precision.add_arguments(ap, rounds=30, each="each mask builder")


def command(a) -> int:
    return precision.command(a, run)
