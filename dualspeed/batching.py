"""How one optimizer step's samples split over processes: the global batch, per-device batch, accumulation steps."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .typed_merge import ConfigError


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's samples split: global = per_device x grad_accum x world_size."""

    global_batch: int
    per_device: int
    grad_accum: int
    world_size: int

    def to_dict(self) -> dict:
        return asdict(self)


def batch_plan(t, world_size: int, continues: int | None = None) -> BatchPlan:
    """The batch split of one start of a stage (`t`, a config.TrainConfig) on `world_size` processes; checked at
    plan time (grid/plan_check.py) and again at run time, before any data or model is read.

    The global batch is train.global_batch_size when set; else, for a run resumed from a checkpoint whose global
    batch was `continues`, that one (the run keeps its global batch on another process count); else
    batch_size x grad_accum x world_size. grad_accum is derived from the global batch unless set."""
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    procs = f"{world_size} process{'es' if world_size > 1 else ''}"
    if t.global_batch_size:
        target, source = t.global_batch_size, f"config key 'train.global_batch_size' is {t.global_batch_size}"
    elif continues and not t.grad_accum:
        target, source = continues, f"the checkpoint being resumed trained with a global batch of {continues}"
    else:
        accum = t.grad_accum or 1
        return BatchPlan(t.batch_size * accum * world_size, t.batch_size, accum, world_size)
    step = t.batch_size * world_size
    if target % step:
        share = (f"set train.batch_size to a divisor of {target // world_size} (the share of each process)"
                 if target % world_size == 0 else
                 f"{target} does not split evenly over {procs} at all: run on a process count that divides it")
        raise ConfigError(
            f"{source}, which is not a multiple of train.batch_size ({t.batch_size}) x {procs} = {step} "
            f"samples per accumulation step: {share}")
    accum = target // step
    if t.grad_accum and t.grad_accum != accum:
        raise ConfigError(
            f"config keys 'train.global_batch_size' ({target}) and 'train.grad_accum' ({t.grad_accum}) disagree on "
            f"{procs}: {target} / (train.batch_size {t.batch_size} x {world_size}) = {accum} accumulation steps. "
            f"Remove train.grad_accum (it is derived from the global batch) or set it to {accum}")
    return BatchPlan(target, t.batch_size, accum, world_size)
