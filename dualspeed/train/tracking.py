"""Experiment tracking: which trackers the Trainer reports to, DualSpeed's own scalars beside the
Trainer's, and the learning rate of each optimizer group."""
from __future__ import annotations

import math

from ..modes import SLOW, TRAINING_MODES


def report_to(name: str) -> list[str]:
    """train.report_to -> TrainingArguments.report_to ("none": no tracker at all)."""
    return [] if name == "none" else [name]


def group_names(optimizer) -> list[str]:
    """One name per optimizer part (projector, llm, isolator, vision): a part's decay and no-decay
    groups share one LR."""
    if optimizer is None:
        return []
    return list(dict.fromkeys(g.get("name", f"group{i}") for i, g in enumerate(optimizer.param_groups)))


def group_lrs(optimizer) -> dict[str, float]:
    """Each part's current LR: read before a step, the LR that step uses (the scheduler moves every
    group on to the next step's LR at the step's end)."""
    if optimizer is None:
        return {}
    return {g.get("name", f"group{i}"): g["lr"] for i, g in enumerate(optimizer.param_groups)}


def mode_scalars(window: list[dict]) -> dict[str, float]:
    """Averages over the steps since the last log: the loss of each mode, teacher/student CE and KL (slow
    steps), visual tokens per step and the share of slow steps. Absent when no step had the value."""

    def mean(vals):
        vals = [float(v) for v in vals if not math.isnan(float(v))]
        return sum(vals) / len(vals) if vals else None

    out = {f"loss_{m}": mean([s["loss"] for s in window if s["mode"] == m]) for m in TRAINING_MODES}
    out.update({k: mean([s[k] for s in window]) for k in ("teacher_ce", "student_ce", "kl")})
    out["visual_tokens"] = mean([s["visual_tokens"] for s in window])
    out["slow_step_frac"] = mean([s["mode"] == SLOW for s in window])
    return {k: v for k, v in out.items() if v is not None}
