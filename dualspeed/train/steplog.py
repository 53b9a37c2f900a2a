"""The per-step record of a run (steps.csv) and the totals timing.json derives from it."""
from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..modes import TRAINING_MODES
from .resume import checkpoint_step
from .tracking import group_lrs, group_names


class StepLog(TrainerCallback):
    """Per-step CSV: mode, teacher/student CE, KL, loss, tokens, step time, and the LR each optimizer
    part used in that step (`lr_projector`, `lr_llm`, `lr_isolator`, `lr_vision`: those that train)."""

    FIELDS = ["step", "mode", "loss", "teacher_ce", "student_ce", "kl", "visual_tokens", "text_tokens", "samples",
              "step_time_s", "flops"]

    def __init__(self, trainer, path: Path):  # trainer: train.DualSpeedTrainer
        self.trainer, self.path = trainer, path
        self.t0 = None
        self.lrs: dict[str, float] = {}

    def fields(self) -> list[str]:
        return self.FIELDS + [f"lr_{g}" for g in group_names(self.trainer.optimizer)]

    def on_train_begin(self, args, state, control, **kw):
        if not state.is_world_process_zero:
            return
        # A resumed run replays from the checkpoint's step: rows a killed attempt wrote after it
        # would appear twice, so the log is cut back to the checkpoint.
        kept = [r for r in read_steps(self.path) if int(r["step"]) <= state.global_step] if state.global_step else []
        with self.path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.fields())
            w.writerows([r.get(k, "") for k in self.fields()] for r in kept)

    def on_step_begin(self, args, state, control, **kw):
        self.lrs = group_lrs(self.trainer.optimizer)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        dt = time.perf_counter() - self.t0
        s = self.trainer.pop_step_stats()
        if not state.is_world_process_zero:
            return
        row = [state.global_step, s["mode"], s["loss"], s["teacher_ce"], s["student_ce"], s["kl"],
               s["visual_tokens"], s["text_tokens"], s["samples"], round(dt, 5), s["flops"]]
        row += [self.lrs.get(g, math.nan) for g in group_names(self.trainer.optimizer)]
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow(row)


def read_steps(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def step_totals(steps_csv: Path, resume: str | None, runtime: float) -> dict:
    """Totals over every step of the run, the steps of earlier (killed) attempts included: steps.csv
    is the complete per-step record once cut back to the checkpoint. A resumed run's wall time is
    this attempt's runtime plus the loop time of the steps it did not redo."""
    rows = read_steps(steps_csv)
    done = checkpoint_step(resume) if resume else 0
    earlier = sum(float(r["step_time_s"]) for r in rows if int(r["step"]) <= done)
    total = runtime + earlier
    vis, txt = sum(int(r["visual_tokens"]) for r in rows), sum(int(r["text_tokens"]) for r in rows)
    samples = sum(int(r.get("samples") or 0) for r in rows)
    return {"train_runtime_s": total, "steps": len(rows), "loop_step_time_s": sum(float(r["step_time_s"]) for r in rows),
            "samples": samples, "visual_tokens": vis, "text_tokens": txt,
            "tokens_per_s": (vis + txt) / total if total else None, "samples_per_s": samples / total if total else None,
            "mode_steps": {m: sum(r["mode"] == m for r in rows) for m in TRAINING_MODES},
            # FLOPs of every step on every rank (dualspeed/train/step_flops.py); rows older than the column count 0
            "flops": sum(float(r.get("flops") or 0) for r in rows),
            "mode_flops": {m: sum(float(r.get("flops") or 0) for r in rows if r["mode"] == m) for m in TRAINING_MODES}}
