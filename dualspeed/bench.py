"""Step-time benchmark of baseline, NaivePrune, DualSpeed and p-MoD, side by side in one process.

    python -m dualspeed.bench --preset tiny            # CPU, the tiny model
    python -m dualspeed.bench --preset 7b-pretrain     # GPU: Vicuna-7B + CLIP-L/336 shapes, LLM frozen (stage 1)
    python -m dualspeed.bench --preset 7b-sft          # GPU: the same with LoRA r=128 (stage 2)
    python -m dualspeed.bench --preset next-7b-sft     # GPU: LLaVA-NeXT anyres, 5 crops x 576 tokens, LoRA

The 7B presets build the real architectures at full depth with random weights (the compute per step
is the same as with trained ones), trainable parts as in the recipe. Each round runs one step of
every mode - full sequence, fast without isolator, fast with isolator, slow with its fast-mode
teacher - so drift in machine load hits all alike; burn-in rounds come first and the device is
synchronised around each timed step. Per-variant step time: baseline = full, NaivePrune = fast,
DualSpeed = (1 - r) * fast-with-isolator + r * slow, the expectation over its mode schedule; p-MoD =
a full-sequence step with the LLM's layers routed per PRD (the same weights plus zero-init routers).
"""
from __future__ import annotations

import json
import statistics
import time

import torch
from transformers import CLIPVisionConfig, LlamaConfig, set_seed

from . import cli
from . import flops, vtp
from .config import RunConfig
from .fastslow import mode_loss
from .build import llava_config
from .flops_cli import preset_case
from .model import DualSpeedLlava, Prune
from .modes import INFERENCE_MODES, STEP_KINDS

VICUNA_7B = dict(d=4096, layers=32, heads=32, inter=11008, vocab=32064)
CLIP_L_336 = dict(vis_d=1024, vis_layers=24, grid=24)  # 336 px at patch 14: 576 tokens per crop
PRESETS = {
    # llm: how the LLM trains (frozen = projector and isolator only, as pretraining); r: slow-step probability
    "tiny": dict(d=128, layers=4, heads=4, inter=256, vocab=64, grid=8, vis_d=64, vis_layers=2, text=48, batch=32,
                 llm="full", r=0.1),
    "7b-pretrain": dict(**VICUNA_7B, **CLIP_L_336, text=40, batch=32, llm="frozen", r=0.0),
    "7b-sft": dict(**VICUNA_7B, **CLIP_L_336, text=160, batch=16, llm="lora", r=0.1),
    # LLaVA-NeXT: square 672 px images -> a base crop + 2x2 grid crops of 336 px
    "next-7b-sft": dict(**VICUNA_7B, **CLIP_L_336, text=160, batch=4, llm="lora", r=0.1, anyres=True),
}
PRESETS["tiny-next"] = {**PRESETS["tiny"], "batch": 8, "anyres": True}


def next_pinpoints(crop: int) -> list[list[int]]:
    """LLaVA-NeXT's anyres resolutions ([[336, 672], ...] at 336 px crops), for any crop size."""
    return [[crop, 2 * crop], [2 * crop, crop], [2 * crop, 2 * crop], [3 * crop, crop], [crop, 3 * crop]]


def build(p: dict, device, dtype) -> DualSpeedLlava:
    from .train import set_trainable

    vision = CLIPVisionConfig(hidden_size=p["vis_d"], intermediate_size=4 * p["vis_d"], num_hidden_layers=p["vis_layers"],
                              num_attention_heads=max(1, p["vis_d"] // 64), image_size=p["grid"] * 14, patch_size=14)
    text = LlamaConfig(vocab_size=p["vocab"], hidden_size=p["d"], intermediate_size=p["inter"],
                       num_hidden_layers=p["layers"], num_attention_heads=p["heads"], num_key_value_heads=p["heads"],
                       max_position_embeddings=4096)
    cfg, cls = llava_config(vision, text, next_pinpoints(p["grid"] * 14) if p.get("anyres") else None,
                             image_token_index=p["vocab"] - 1, vision_feature_layer=-1,
                             vision_feature_select_strategy="default")
    # initialise in place on the device, in the target dtype: a 7B model built on the CPU in fp32
    # would take minutes and 27 GB
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = DualSpeedLlava(cls(cfg), isolator_len=4)
    finally:
        torch.set_default_dtype(default)
    run_cfg = RunConfig()
    run_cfg.train.llm = p["llm"]  # LoRA settings: the recipe's defaults (r 128, alpha 256, all linear layers)
    set_trainable(model, run_cfg)  # the trainer's own freezing, LoRA included
    model.to(device)
    if device == "cuda":
        model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def batch(p: dict, device, dtype, gen):
    b, t = p["batch"], p["text"]
    ids = torch.randint(0, p["vocab"] - 2, (b, t), generator=gen)
    ids[:, 4] = p["vocab"] - 1  # the image placeholder
    labels = torch.full_like(ids, -100)
    labels[:, -8:] = ids[:, -8:]  # an 8-token answer
    side = p["grid"] * 14
    out = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device),
           "has_image": torch.ones(b, dtype=torch.bool, device=device)}
    if p.get("anyres"):
        out["pixel_values"] = torch.randn(b, 5, 3, side, side, generator=gen).to(device, dtype)
        out["image_sizes"] = torch.tensor([[2 * side, 2 * side]] * b, device=device)
    else:
        out["pixel_values"] = torch.randn(b, 3, side, side, generator=gen).to(device, dtype)
    return out


def step(model, opt, inputs, mode: str, prune: Prune, isolator: bool) -> None:
    """One optimizer step with the trainer's own per-mode loss (fastslow.mode_loss). On a GPU the
    forward runs under bf16 autocast, as the HF Trainer's bf16=True does: peft keeps LoRA weights in
    fp32, and without autocast their matmuls would run in fp32."""
    device = inputs["input_ids"].device.type
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        loss = mode_loss(model, inputs, mode, prune, isolator).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def run(preset: str, steps: int, burn_in: int, p_ratio: float, r: float | None, device: str, dtype) -> dict:
    p = PRESETS[preset]
    r = p["r"] if r is None else r
    gen = torch.Generator().manual_seed(0)
    model = build(p, device, dtype)
    routers = model.enable_pmod()  # attached only for the p-MoD steps below
    model.pmod = None
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
            step(model, opt, inputs, mode, prune, isolator)
            sync(device)
            if i >= burn_in:
                times[kind].append(time.perf_counter() - t0)
    mean = {m: statistics.fmean(v) for m, v in times.items()}
    variant = flops.variants(mean, r)
    speedup = {k: variant["baseline"] / v for k, v in variant.items()}
    shape, setup, samples, _ = preset_case(preset, checkpointing=device == "cuda")
    limit = flops.compute_speedups(shape, setup, samples, p_ratio, r, pmod_ratios=routers.ratios)
    return {
        "preset": preset, "device": torch.cuda.get_device_name(0) if device == "cuda" else f"cpu x{torch.get_num_threads()}",
        "dtype": str(dtype), "batch": p["batch"], "llm": p["llm"], "steps": steps, "burn_in": burn_in, "p": p_ratio,
        "r": r, "pmod_ratios": routers.ratios, **visual_tokens(model, inputs, prune, p["batch"]),
        "mode_step_time_s": mean, "mode_median_step_time_s": {m: statistics.median(v) for m, v in times.items()},
        "step_time_s": variant, "speedup_vs_baseline": speedup,
        # the FLOPs model's limit (dualspeed/flops.py) and how much of it the measured speedup reaches
        "mode_tflops": {m: f["total"] / 1e12 for m, f in limit["mode_flops"].items()},
        "compute_speedup": limit["compute_speedup"],
        "measured_over_limit": {k: speedup[k] / limit["compute_speedup"][k] for k in speedup},
        "peak_gpu_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        "cudnn_attention": torch.backends.cuda.cudnn_sdp_enabled() if device == "cuda" else None,
        **divprune_cost(p, device, dtype),
    }


@torch.no_grad()
def visual_tokens(model, inputs, prune, batch: int) -> dict:
    """Visual tokens per sample as the model feeds them to the LLM in each mode (LLaVA-NeXT full:
    crops packed with a newline token per grid row)."""
    return {"visual_tokens_full": model(**inputs).visual_tokens // batch,
            "visual_tokens_fast": model(**inputs, prune=prune).visual_tokens // batch,
            "visual_tokens_fast_isolator": model(**inputs, prune=prune, isolator=True).visual_tokens // batch}


def divprune_cost(p: dict, device, dtype, reps: int = 5) -> dict:
    """DivPrune time for one training batch of crops (N = grid^2 tokens of width d), all at once."""
    n = p["grid"] ** 2
    crops = p["batch"] * (5 if p.get("anyres") else 1)
    feats = torch.randn(crops, n, p["d"], device=device, dtype=dtype)
    k = vtp.keep_count(n, 0.9)
    method = vtp.get("divprune")
    method(feats, k)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        method(feats, k)
    sync(device)
    return {"divprune_crops_per_batch": crops, "divprune_ms_per_batch": 1000 * (time.perf_counter() - t0) / reps}


def eval_data_of(ckpt: str, data: str | None) -> str:
    """The synthetic data the checkpoint was trained on (its run's config.resolved.yaml), unless given."""
    from pathlib import Path

    import yaml

    if data is None:
        resolved = Path(ckpt).parent / "config.resolved.yaml"
        if resolved.is_file():
            data = str(Path(yaml.safe_load(resolved.read_text())["data"]["json"]).parent)
    if data is None or not (Path(data) / "eval_count.json").is_file():
        raise SystemExit(f"--eval-data: no synthetic held-out set eval_count.json under {data or '(unknown)'}; "
                         f"{ckpt} is not a finished run on synthetic data, so pass --eval-data <synthetic data root>")
    return data


def eval_throughput(ckpt: str, data: str | None = None, rounds: int = 3, n: int = 200, batch_size: int = 64) -> dict:
    """Inference samples/s of one checkpoint in each mode, rounds interleaved in one process."""
    import json as _json
    from pathlib import Path

    from .infer import Predictor, Query

    data = eval_data_of(ckpt, data)
    rows = _json.loads((Path(data) / "eval_count.json").read_text())[:n]
    queries = [Query(r["question"], Path(data) / r["image"]) for r in rows]
    preds = {m: Predictor(ckpt, mode=m, batch_size=batch_size) for m in INFERENCE_MODES}
    for p in preds.values():  # burn-in
        p.predict(queries[:batch_size])
        p.stats.update(samples=0, seconds=0.0, visual_tokens=0, images=0)
    for _ in range(rounds):
        for p in preds.values():
            p.predict(queries)
    out = {m: p.summary() for m, p in preds.items()}
    base = out["normal"]["samples_per_s"]
    return {m: {"samples_per_s": s["samples_per_s"], "visual_tokens_per_sample": s["visual_tokens_per_sample"],
                "speedup_vs_normal": s["samples_per_s"] / base} for m, s in out.items()}


def main(argv=None):
    ap = cli.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--steps", type=int, default=20, help="timed rounds (one step of every mode each)")
    ap.add_argument("--burn-in", type=int, default=3)
    ap.add_argument("--p", type=float, default=0.9)
    ap.add_argument("--r", type=float, help="slow-step probability (default: the preset's; 0 for pretraining)")
    ap.add_argument("--no-cudnn-attention", action="store_true",
                    help="keep SDPA off its cuDNN backend (a comparison: its per-call CPU cost can dominate)")
    ap.add_argument("--out")
    ap.add_argument("--eval-ckpt", help="instead: inference throughput of this checkpoint in each mode")
    ap.add_argument("--eval-data", help="synthetic data root holding eval_count.json (default: the data the "
                                        "checkpoint's run trained on, from its config.resolved.yaml)")
    a = ap.parse_args(argv)
    set_seed(0)  # the random inputs and weights of every preset: the same on every run
    if a.eval_ckpt:
        print(json.dumps(eval_throughput(a.eval_ckpt, a.eval_data), indent=2))
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        if a.no_cudnn_attention:
            torch.backends.cuda.enable_cudnn_sdp(False)
    res = run(a.preset, a.steps, a.burn_in, a.p, a.r, device, dtype)
    from .bench_vtp import vtp_costs  # every registered method, as a fraction of this run's fast step

    res["vtp_cost"] = vtp_costs(PRESETS[a.preset], device, dtype, p_ratio=a.p, fast_step_s=res["mode_step_time_s"]["fast"])
    text = json.dumps(res, indent=2)
    if a.out:
        open(a.out, "w").write(text)
    print(text)
    for k in ("naiveprune", "dualspeed", "pmod"):
        print(f"{a.preset} {k}: measured {res['speedup_vs_baseline'][k]:.2f}x / compute limit "
              f"{res['compute_speedup'][k]:.2f}x = {100 * res['measured_over_limit'][k]:.0f}%")


if __name__ == "__main__":
    main()
