"""fp32 against bf16 autocast for the tiny recipe's training steps on the CPU, side by side in one process.

    python -m dualspeed.bench precision                 # SFT (LoRA) and pretraining (frozen LLM) steps, 1 thread
    python -m dualspeed.bench precision --batch 8 --threads 2

Each round runs one step of every case in both precisions, alternating, so drift in machine load hits all alike.
bf16 is what the training runs do with `train.bf16: true` on a CPU: autocast over fp32 master weights, attention in
fp32 (dualspeed/train/cpu_bf16.py). The step's FLOPs come from the FLOPs model; the core's peaks are measured here
with a large matmul in each dtype (the rate a GEMM reaches, not the datasheet's).
"""
from __future__ import annotations

import json
import statistics
import time

import torch
from transformers import set_seed

from ..models import flops
from .preset_model import batch, build
from .presets import PRESETS, preset_case
from .step_time import step

CASES = {"sft": "lora", "pretrain": "frozen"}


def gemm_peak(dtype, n: int = 1024, reps: int = 10) -> float:
    """FLOP/s of an n x n x n matmul in `dtype` on this process's threads."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def tiny_case(llm: str, batch_size: int, lora_r: int, text: int):
    """-> (model, optimizer, batch): the tiny preset with `llm` frozen or LoRA-trained, in fp32 weights."""
    p = {**PRESETS["tiny"], "llm": llm, "batch": batch_size, "text": text, "lora_r": lora_r}
    model = build(p, "cpu", torch.float32)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-5)
    return model, opt, batch(p, "cpu", torch.float32, torch.Generator().manual_seed(0))


def run(rounds: int, burn_in: int, batch_size: int, lora_r: int, text: int) -> dict:
    setups = {}
    for case, llm in CASES.items():
        model, opt, inputs = tiny_case(llm, batch_size, lora_r, text)
        shape, _, samples, _ = preset_case("tiny")  # the shapes; the setup and batch are this benchmark's own
        setup = flops.Setup(llm=llm, lora_r=lora_r, checkpointing=False)
        samples = [flops.Sample(text - 1, samples[0].visual, 1, 8)] * batch_size
        setups[case] = (model, opt, inputs, flops.train_step(shape, setup, samples, "full").total)
    times = {(c, bf): [] for c in CASES for bf in (False, True)}
    for i in range(burn_in + rounds):
        for case, (model, opt, inputs, _) in setups.items():
            for bf in (False, True):
                t0 = time.perf_counter()
                step(model, opt, inputs, "full", None, False, cpu_bf16_autocast=bf)
                if i >= burn_in:
                    times[case, bf].append(time.perf_counter() - t0)
    peak = {"fp32": gemm_peak(torch.float32), "bf16": gemm_peak(torch.bfloat16)}
    out = {"threads": torch.get_num_threads(), "batch": batch_size, "text_tokens": text, "lora_r": lora_r,
           "rounds": rounds, "gemm_peak_gflops": {k: round(v / 1e9, 1) for k, v in peak.items()}, "cases": {}}
    for case, (*_, step_flops) in setups.items():
        fp32, bf16 = statistics.median(times[case, False]), statistics.median(times[case, True])
        out["cases"][case] = {
            "step_ms": {"fp32": round(fp32 * 1e3, 2), "bf16": round(bf16 * 1e3, 2)},
            "bf16_over_fp32": round(bf16 / fp32, 3), "gflop_per_step": round(step_flops / 1e9, 2),
            "share_of_fp32_peak": {"fp32": round(step_flops / fp32 / peak["fp32"], 3)},
            "share_of_bf16_peak": {"bf16": round(step_flops / bf16 / peak["bf16"], 3)}}
    return out


def add_arguments(ap, rounds: int = 20, each: str = "both precisions") -> None:
    """The tiny steps' knobs, shared by the CPU benchmarks that time them side by side (precision, masks)."""
    ap.add_argument("--rounds", type=int, default=rounds, help=f"timed rounds (one step of every case, {each})")
    ap.add_argument("--burn-in", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8, help="samples per step (the tiny default's SFT batch)")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--text", type=int, default=40, help="text tokens per sample besides the image's")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")


def command(a, run=run) -> int:
    torch.set_num_threads(a.threads)
    set_seed(0)
    res = run(a.rounds, a.burn_in, a.batch, a.lora_r, a.text)
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return 0
