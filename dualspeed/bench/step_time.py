"""Step-time benchmark of baseline, NaivePrune, DualSpeed, p-MoD and PyramidDrop, side by side in one process.

    python -m dualspeed.bench step --preset tiny            # CPU, the tiny model
    python -m dualspeed.bench step --preset 7b-pretrain     # GPU: Vicuna-7B + CLIP-L/336 shapes, LLM frozen (stage 1)
    python -m dualspeed.bench step --preset 7b-sft          # GPU: the same with LoRA r=128 (stage 2)
    python -m dualspeed.bench step --preset next-7b-sft     # GPU: LLaVA-NeXT anyres, 5 crops x 576 tokens, LoRA

The 7B presets build the real architectures at full depth with random weights (the compute per step
is the same as with trained ones), trainable parts as in the recipe. Each round runs one step of
every mode - full sequence, fast without isolator, fast with isolator, slow with its fast-mode
teacher - so drift in machine load hits all alike; burn-in rounds come first and the device is
synchronised around each timed step. Per-variant step time: baseline = full, NaivePrune = fast,
DualSpeed = (1 - r) * fast-with-isolator + r * slow, the expectation over its mode schedule; p-MoD =
a full-sequence step with the LLM's layers routed per PRD (the same weights plus zero-init routers);
PyramidDrop = a full-sequence step dropping visual tokens at a quarter, half and three quarters of the LLM's
depth, lam 0.5 (8, 16, 24 of 32: its published split; no weights of its own).
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
from transformers import set_seed

from .. import vtp
from ..models import flops
from ..models.prune import Prune
from ..modes import STEP_KINDS
from ..train import cpu_bf16
from ..train.losses import mode_loss
from .preset_model import batch, build
from .presets import PRESETS, preset_case
from .timing import mean_ms, sync
from .vtp_cost import vtp_costs


def step(model, opt, inputs, mode: str, prune: Prune, isolator: bool, cpu_bf16_autocast: bool = False) -> None:
    """One optimizer step with the trainer's own per-mode loss (train/losses.py: mode_loss). On a GPU the
    forward runs under bf16 autocast, as the HF Trainer's bf16=True does: peft keeps LoRA weights in
    fp32, and without autocast their matmuls would run in fp32. On a CPU, fp32 unless cpu_bf16_autocast: then as
    a run with train.bf16 trains there (train/cpu_bf16.py)."""
    device = inputs["input_ids"].device.type
    if device == "cpu":
        ctx = cpu_bf16.autocast(cpu_bf16_autocast)
    else:
        ctx = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    with ctx:
        loss = mode_loss(model, inputs, mode, prune, isolator).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def run(preset: str, steps: int, burn_in: int, p_ratio: float, r: float | None, device: str, dtype) -> dict:
    p = PRESETS[preset]
    r = p["r"] if r is None else r
    gen = torch.Generator().manual_seed(0)
    model = build(p, device, dtype)
    routers = model.enable_pmod()  # attached only for the p-MoD steps below
    model.pmod = None
    how = flops.default_pdrop(model.config.text_config.num_hidden_layers)
    dropping = model.enable_pdrop(how["layers"], how["lam"])  # set only for the PyramidDrop steps below
    model.pdrop = None
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad] + list(routers.parameters()), lr=1e-5)
    inputs = batch(p, device, dtype, gen)
    prune = Prune("divprune", p_ratio)
    kinds = [k for k in STEP_KINDS if k != "slow" or r > 0]  # pretraining never runs slow steps
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for i in range(burn_in + steps):
        for kind in kinds:
            sync(device)
            t0 = time.perf_counter()
            mode, isolator = STEP_KINDS[kind]
            model.pmod = routers if kind == "pmod" else None
            model.pdrop = dropping if kind == "pdrop" else None
            step(model, opt, inputs, mode, prune, isolator)
            sync(device)
            if i >= burn_in:
                times[kind].append(time.perf_counter() - t0)
    mean = {m: statistics.fmean(v) for m, v in times.items()}
    variant = flops.variants(mean, r)
    speedup = {k: variant["baseline"] / v for k, v in variant.items()}
    shape, setup, samples, _ = preset_case(preset, checkpointing=device == "cuda")
    limit = flops.compute_speedups(shape, setup, samples, p_ratio, r, pmod_ratios=routers.ratios, pdrop=how)
    return {
        "preset": preset, "device": torch.cuda.get_device_name(0) if device == "cuda" else f"cpu x{torch.get_num_threads()}",
        "dtype": str(dtype), "batch": p["batch"], "llm": p["llm"], "steps": steps, "burn_in": burn_in, "p": p_ratio,
        "r": r, "pmod_ratios": routers.ratios, "pdrop": how, **visual_tokens(model, inputs, prune, p["batch"]),
        "mode_step_time_s": mean, "mode_median_step_time_s": {m: statistics.median(v) for m, v in times.items()},
        "step_time_s": variant, "speedup_vs_baseline": speedup,
        # the FLOPs model's limit (dualspeed/models/flops.py) and how much of it the measured speedup reaches
        "mode_tflops": {m: f["total"] / 1e12 for m, f in limit["mode_flops"].items()},
        "compute_speedup": limit["compute_speedup"],
        "measured_over_limit": {k: speedup[k] / limit["compute_speedup"][k] for k in speedup},
        "peak_gpu_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        "cudnn_attention": torch.backends.cuda.cudnn_sdp_enabled() if device == "cuda" else None,
        **divprune_cost(p, device, dtype, p_ratio),
    }


@torch.no_grad()
def visual_tokens(model, inputs, prune, batch: int) -> dict:
    """Visual tokens per sample as the model feeds them to the LLM in each mode (LLaVA-NeXT full:
    crops packed with a newline token per grid row)."""
    return {"visual_tokens_full": model(**inputs).visual_tokens // batch,
            "visual_tokens_fast": model(**inputs, prune=prune).visual_tokens // batch,
            "visual_tokens_fast_isolator": model(**inputs, prune=prune, isolator=True).visual_tokens // batch}


def divprune_cost(p: dict, device, dtype, p_ratio: float, reps: int = 5) -> dict:
    """DivPrune time for one training batch of crops (N = grid^2 tokens of width d), all at once, keeping the k
    tokens the benchmark's fast steps keep at p_ratio."""
    n = p["grid"] ** 2
    crops = p["batch"] * (5 if p.get("anyres") else 1)
    feats = torch.randn(crops, n, p["d"], device=device, dtype=dtype)
    k = vtp.keep_count(n, p_ratio)
    method = vtp.get("divprune")
    return {"divprune_crops_per_batch": crops, "divprune_ms_per_batch": mean_ms(lambda: method(feats, k), reps, device)}


def add_arguments(ap) -> None:
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--steps", type=int, default=20, help="timed rounds (one step of every kind each)")
    ap.add_argument("--burn-in", type=int, default=3)
    ap.add_argument("--p", type=float, default=0.9)
    ap.add_argument("--r", type=float, help="slow-step probability (default: the preset's; 0 for pretraining)")
    ap.add_argument("--no-cudnn-attention", action="store_true",
                    help="keep SDPA off its cuDNN backend (a comparison: its per-call CPU cost can dominate)")
    ap.add_argument("--out")


def command(a) -> int:
    set_seed(0)  # the random inputs and weights of every preset: the same on every run
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        if a.no_cudnn_attention:
            torch.backends.cuda.enable_cudnn_sdp(False)
    res = run(a.preset, a.steps, a.burn_in, a.p, a.r, device, dtype)
    # every registered method, as a fraction of this run's fast step
    res["vtp_cost"] = vtp_costs(PRESETS[a.preset], device, dtype, p_ratio=a.p, fast_step_s=res["mode_step_time_s"]["fast"])
    text = json.dumps(res, indent=2)
    if a.out:
        Path(a.out).write_text(text)
    print(text)
    for k in ("naiveprune", "dualspeed", "pmod", "pdrop"):
        print(f"{a.preset} {k}: measured {res['speedup_vs_baseline'][k]:.2f}x / compute limit "
              f"{res['compute_speedup'][k]:.2f}x = {100 * res['measured_over_limit'][k]:.0f}%")
    return 0
