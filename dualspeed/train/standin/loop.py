"""The stand-ins' training loop: AdamW, linear warm-up then cosine decay, gradient clipping, a per-step log and a
progress bar. Small and deterministic from the seed; a killed stand-in run starts again (minutes)."""
from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
from tqdm import tqdm

from ...models import causal_mask
from .. import cpu_bf16
from .config import StandinTrain


def lr_at(step: int, total: int, t: StandinTrain) -> float:
    warm = max(1, int(total * t.warmup_ratio))
    if step < warm:
        return t.lr * (step + 1) / warm
    return t.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def fit(model: torch.nn.Module, batches: Iterator, loss_fn: Callable, total: int, t: StandinTrain, out: Path,
        desc: str) -> dict:
    """Train for `total` steps over `batches` (an endless iterator); steps.csv holds every step."""
    causal_mask.install()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, betas=(0.9, 0.95))
    model.train()
    t0 = time.perf_counter()
    with open(out / "steps.csv", "w", newline="") as f, tqdm(total=total, desc=desc, unit="step") as bar:
        log = csv.writer(f)
        log.writerow(["step", "loss", "lr", "step_time_s"])
        for step in range(total):
            s0 = time.perf_counter()
            lr = lr_at(step, total, t)
            for g in opt.param_groups:
                g["lr"] = lr
            with cpu_bf16.autocast(t.bf16):
                loss = loss_fn(model, next(batches))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
            opt.step()
            log.writerow([step + 1, f"{loss.item():.6f}", f"{lr:.3e}", f"{time.perf_counter() - s0:.4f}"])
            bar.update()
            if (step + 1) % t.logging_steps == 0 or step + 1 == total:
                bar.set_postfix(loss=f"{loss.item():.3f}")
                f.flush()
    model.eval()
    return {"steps": total, "train_seconds": round(time.perf_counter() - t0, 2)}
