"""Which checkpoint a run continues from (`train.resume`), and with which batch split."""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import yaml

from ..config import BatchPlan, ConfigError, RunConfig, batch_plan
from ..models.checkpoint import META_FILE

log = logging.getLogger("dualspeed.train")

# How the global batch splits over processes and accumulation steps: a resumed run may split it differently (on
# another process count, or with a per-device batch that fits other GPUs) as long as the global batch stays the one
# its checkpoint trained with, which is compared instead.
SPLIT_KEYS = ("batch_size", "grad_accum", "global_batch_size")


def resume_point(cfg: RunConfig, out: Path, write: bool, world_size: int = 1) -> tuple[str | None, BatchPlan]:
    """The checkpoint to continue from and this start's batch split. `resume: auto` takes the latest checkpoint of
    this same config; called before any data or model is read, so a batch that does not fit fails at once.

    Checkpoints left by a run of another config (the user changed a setting and re-ran) are not this run's past:
    they are removed, and the run starts from step 0. The process count is not part of the config: a run resumed on
    twice or half the processes keeps its global batch (train.global_batch_size, or the checkpoint's when that is
    not set and train.grad_accum is left to be derived), its data order and its mode schedule; a start that would
    change the global batch on another process count is refused rather than silently training another recipe."""
    t = cfg.train
    ckpt = t.resume if t.resume and t.resume != "auto" else None
    ckpts = out / "checkpoints"
    if t.resume == "auto" and ckpts.is_dir():
        old = out / "config.resolved.yaml"
        changed = (differing_keys(_comparable(yaml.safe_load(old.read_text()), split=False),
                                  _comparable(cfg.to_dict(), split=False)) if old.is_file() else ["(no resolved config)"])
        last = last_complete_checkpoint(ckpts) if not changed else None
        if last and checkpoint_batch(last) is None:  # written before checkpoints recorded their batch
            changed = differing_keys(_comparable(yaml.safe_load(old.read_text())), _comparable(cfg.to_dict()))
            last = None if changed else last
        if changed:
            _start_over(out, write, f"holds checkpoints of a different config (keys that differ: {', '.join(changed)})")
        ckpt = last
    before = checkpoint_batch(ckpt) if ckpt else None
    if before is None:
        if ckpt:
            log.info("resuming from %s", ckpt)
        return ckpt, batch_plan(t, world_size)
    moved = before.world_size != world_size
    if moved and t.deepspeed:
        # DeepSpeed 0.19's engine refuses ZeRO state partitioned for another data-parallel size, but only once the
        # model is loaded; say so now, with the ways out
        raise ConfigError(
            f"{ckpt} holds DeepSpeed ZeRO optimizer state partitioned over {before.world_size} processes and this "
            f"start has {world_size} (config key 'train.deepspeed' is {t.deepspeed!r}); DeepSpeed cannot repartition "
            f"it. Resume on {before.world_size} processes (resources.train gpus x nodes), convert the checkpoint "
            "with DeepSpeed's ds_to_universal and load it as a universal checkpoint yourself, or start over with "
            "train.resume=''")
    plan = batch_plan(t, world_size, continues=before.global_batch if moved else None)
    if plan.global_batch == before.global_batch:
        log.info("resuming from %s: global batch %d = %d per device x %d accumulation steps x %d processes "
                 "(it trained with %d x %d x %d)", ckpt, plan.global_batch, plan.per_device, plan.grad_accum,
                 plan.world_size, before.per_device, before.grad_accum, before.world_size)
        return ckpt, plan
    if t.resume == "auto" and not moved:  # the batch keys changed on the same process count: another recipe
        _start_over(out, write, f"holds checkpoints trained with a global batch of {before.global_batch}, this config "
                    f"gives {plan.global_batch} (keys: train.{', train.'.join(SPLIT_KEYS)})")
        return None, batch_plan(t, world_size)
    raise ConfigError(
        f"{ckpt} trained with a global batch of {before.global_batch} ({_split(before)}); this start gives "
        f"{plan.global_batch} ({_split(plan)}), which would change the recipe in the middle of the run. Set "
        f"train.global_batch_size={before.global_batch} (train.grad_accum is then derived for any process count), "
        f"resume on {before.world_size} processes, or start over with train.resume=''")


def _split(b: BatchPlan) -> str:
    return f"{b.per_device} per device x {b.grad_accum} accumulation steps x {b.world_size} processes"


def _start_over(out: Path, write: bool, why: str) -> None:
    log.warning("%s %s; starting from step 0", out, why)
    if write:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        (out / "steps.csv").unlink(missing_ok=True)


def checkpoint_meta(plan: BatchPlan) -> dict:
    """What a checkpoint records of its batch split (read back by checkpoint_batch)."""
    return {"batch": asdict(plan)}


def checkpoint_batch(path: str | Path) -> BatchPlan | None:
    """The batch split a checkpoint trained with; None for a checkpoint written before it was recorded."""
    meta = Path(path) / META_FILE
    batch = json.loads(meta.read_text()).get("batch") if meta.is_file() else None
    return BatchPlan(**batch) if batch else None


class FinishedRunError(RuntimeError):
    pass


def guard_finished(cfg: RunConfig, out: Path, force: bool, write: bool) -> dict | None:
    """Refuse to train into a directory that holds a finished run (`hf/` and `timing.json`) of another config;
    with `force`, remove that run first. A finished run of the same config is returned (its timing): there is
    nothing left to train."""
    old = out / "config.resolved.yaml"
    if not ((out / "hf").is_dir() and (out / "timing.json").is_file()):
        return None
    before = _comparable(yaml.safe_load(old.read_text())) if old.is_file() else {}
    changed = differing_keys(before, _comparable(cfg.to_dict()))
    if not changed and not force:
        log.info("%s already holds this config's finished run; nothing to train (--force retrains it)", out)
        return json.loads((out / "timing.json").read_text())
    if not force:
        shown = ", ".join(changed[:12]) + (f" and {len(changed) - 12} more" if len(changed) > 12 else "")
        raise FinishedRunError(
            f"{out} holds a finished run of a different config (keys that differ: {shown}); nothing was changed. "
            "Point output_dir elsewhere (--set output_dir=DIR), or pass --force to replace that run.")
    log.warning("--force: replacing the finished run in %s (keys that differ: %s)", out, ", ".join(changed) or "none")
    if write:
        for name in ("hf", "hf.partial", "checkpoints", "tb"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("timing.json", "steps.csv", "provenance.json", "config.resolved.yaml", "nonfinite_loss.json"):
            (out / name).unlink(missing_ok=True)
    return None


def differing_keys(a, b, prefix: str = "") -> list[str]:
    """Dotted key paths whose values differ between two nested mappings."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += differing_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".") or "(whole config)"]


def checkpoint_step(path: str | Path) -> int | None:
    """The optimizer step of a Trainer checkpoint directory (checkpoint-<step>), or None."""
    tail = Path(path).name.split("-")[-1]
    return int(tail) if tail.isdigit() else None


def last_complete_checkpoint(ckpts: Path) -> str | None:
    """The newest checkpoint whose write finished: the Trainer writes trainer_state.json last, so a
    job killed mid-save leaves a directory without it, which must not be resumed from."""
    done = [d for d in ckpts.glob("checkpoint-*") if checkpoint_step(d) is not None
            and (d / "trainer_state.json").is_file()]
    return str(max(done, key=checkpoint_step)) if done else None


def _comparable(d: dict, split: bool = True) -> dict:
    """A resolved config as compared between starts: `resume` left out, and with split=False the batch split
    (SPLIT_KEYS) too. Keys an older resolved config lacks read as today's defaults, which keep the behaviour the
    run had before they existed; grad_accum 1 (the old default) and 0 (derived) are the same without a global
    batch."""
    base = RunConfig().to_dict()
    d = json.loads(json.dumps(_overlay(base, d)))
    train = {k: v for k, v in d.get("train", {}).items() if k != "resume"}
    if not train.get("global_batch_size") and train.get("grad_accum") == 1:
        train["grad_accum"] = 0
    if not split:
        train = {k: v for k, v in train.items() if k not in SPLIT_KEYS}
    return {**d, "train": train}


def _overlay(base, d):
    if isinstance(base, dict) and isinstance(d, dict):
        return {**base, **{k: _overlay(base.get(k), v) for k, v in d.items()}}
    return d
