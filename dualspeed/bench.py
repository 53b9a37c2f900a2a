"""Step-time benchmark of baseline, NaivePrune and DualSpeed, side by side in one process.

    python -m dualspeed.bench --preset tiny            # CPU, the tiny model
    python -m dualspeed.bench --preset 7b-slice        # GPU: a few Llama-7B-width layers, 576 visual tokens, bf16

Rounds interleave the variants (so drift in machine load hits all alike), with burn-in steps first
and device synchronisation around each timed step. DualSpeed's step time is measured on its real
mode sequence (fast steps, and slow steps with the fast-mode teacher), with r as configured.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from . import vtp
from .fastslow import SLOW, ModeSchedule, distill_kl
from .model import DualSpeedLlava, Prune

PRESETS = {
    # hidden, layers, heads, intermediate, vocab, visual tokens (grid^2), text tokens, batch
    "tiny": dict(d=128, layers=2, heads=4, inter=256, vocab=64, grid=8, text=48, batch=32, vis_d=64, vis_layers=2),
    "7b-slice": dict(d=4096, layers=4, heads=32, inter=11008, vocab=32064, grid=24, text=128, batch=4, vis_d=1024,
                     vis_layers=2),
}


def build(p: dict, device, dtype) -> DualSpeedLlava:
    vision = CLIPVisionConfig(hidden_size=p["vis_d"], intermediate_size=4 * p["vis_d"], num_hidden_layers=p["vis_layers"],
                              num_attention_heads=max(1, p["vis_d"] // 64), image_size=p["grid"] * 14, patch_size=14)
    text = LlamaConfig(vocab_size=p["vocab"], hidden_size=p["d"], intermediate_size=p["inter"],
                       num_hidden_layers=p["layers"], num_attention_heads=p["heads"], num_key_value_heads=p["heads"],
                       max_position_embeddings=4096)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=p["vocab"] - 1,
                      vision_feature_layer=-1, vision_feature_select_strategy="default")
    model = DualSpeedLlava(LlavaForConditionalGeneration(cfg), isolator_len=4).to(device, dtype)
    model.requires_grad_(False)
    model.language_model.requires_grad_(True)
    model.llava.model.multi_modal_projector.requires_grad_(True)
    model.isolator.requires_grad_(True)
    if device == "cuda":
        model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def batch(p: dict, device, dtype, gen):
    b, t = p["batch"], p["text"]
    ids = torch.randint(0, p["vocab"] - 2, (b, t), generator=gen)
    ids[:, 4] = p["vocab"] - 1  # the image placeholder
    labels = torch.full_like(ids, -100)
    labels[:, -8:] = ids[:, -8:]  # an 8-token answer
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device),
            "has_image": torch.ones(b, dtype=torch.bool, device=device),
            "pixel_values": torch.randn(b, 3, p["grid"] * 14, p["grid"] * 14, generator=gen).to(device, dtype)}


def step(model, opt, inputs, mode: str, prune: Prune, isolator: bool):
    if mode == "full":
        loss = model(**inputs).ce
    elif mode != SLOW:
        loss = model(**inputs, prune=prune, isolator=isolator).ce
    else:
        with torch.no_grad():
            teacher = model(**inputs, prune=prune, isolator=True)
        out = model(**inputs)
        loss = out.ce + distill_kl(out.answer_logits, teacher.answer_logits)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def run(preset: str, steps: int, burn_in: int, p_ratio: float, r: float, device: str, dtype) -> dict:
    p = PRESETS[preset]
    gen = torch.Generator().manual_seed(0)
    model = build(p, device, dtype)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-5)
    inputs = batch(p, device, dtype, gen)
    prune = Prune("divprune", p_ratio)
    sched = ModeSchedule(r, seed=0)
    variants = {"baseline": lambda i: ("full", False), "naiveprune": lambda i: ("fast", False),
                "dualspeed": lambda i: (sched.mode(i), True)}
    times: dict[str, list[float]] = {v: [] for v in variants}
    slow_steps = 0
    for i in range(burn_in + steps):
        for name, pick in variants.items():
            mode, iso = pick(i)
            sync(device)
            t0 = time.perf_counter()
            step(model, opt, inputs, mode, prune, iso)
            sync(device)
            if i >= burn_in:
                times[name].append(time.perf_counter() - t0)
                slow_steps += name == "dualspeed" and mode == SLOW
    mean = {k: statistics.fmean(v) for k, v in times.items()}
    base = mean["baseline"]
    out = {"preset": preset, "device": torch.cuda.get_device_name(0) if device == "cuda" else f"cpu x{torch.get_num_threads()}",
           "dtype": str(dtype), "steps": steps, "p": p_ratio, "r": r, "dualspeed_slow_steps": slow_steps,
           "visual_tokens_full": p["grid"] ** 2, "visual_tokens_fast": vtp.keep_count(p["grid"] ** 2, p_ratio) + 4,
           "step_time_s": mean, "median_step_time_s": {k: statistics.median(v) for k, v in times.items()},
           "speedup_vs_baseline": {k: base / v for k, v in mean.items()}}
    out["divprune_ms_per_image"] = divprune_cost(p, device, dtype)
    return out


def divprune_cost(p: dict, device, dtype, reps: int = 5) -> float:
    n = p["grid"] ** 2
    feats = torch.randn(p["batch"], n, p["d"], device=device, dtype=dtype)
    k = vtp.keep_count(n, 0.9)
    method = vtp.get("divprune")
    method(feats, k)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        method(feats, k)
    sync(device)
    return 1000 * (time.perf_counter() - t0) / (reps * p["batch"])


def eval_throughput(ckpt: str, data: str, rounds: int = 3, n: int = 200, batch_size: int = 64) -> dict:
    """Inference samples/s of one checkpoint in each mode, rounds interleaved in one process."""
    import json as _json
    from pathlib import Path

    from .infer import MODES, Predictor, Query

    rows = _json.loads((Path(data) / "eval_count.json").read_text())[:n]
    queries = [Query(r["question"], Path(data) / r["image"]) for r in rows]
    preds = {m: Predictor(ckpt, mode=m, batch_size=batch_size) for m in MODES}
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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--burn-in", type=int, default=3)
    ap.add_argument("--p", type=float, default=0.9)
    ap.add_argument("--r", type=float, default=0.1)
    ap.add_argument("--out")
    ap.add_argument("--eval-ckpt", help="instead: inference throughput of this checkpoint in each mode")
    ap.add_argument("--eval-data", default="resources/synth")
    a = ap.parse_args(argv)
    if a.eval_ckpt:
        print(json.dumps(eval_throughput(a.eval_ckpt, a.eval_data), indent=2))
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    res = run(a.preset, a.steps, a.burn_in, a.p, a.r, device, dtype)
    text = json.dumps(res, indent=2)
    if a.out:
        open(a.out, "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
