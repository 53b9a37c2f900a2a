"""Which checkpoint a run continues from (`train.resume`)."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import yaml

from ..config import RunConfig

log = logging.getLogger("dualspeed.train")


def resume_point(cfg: RunConfig, out: Path, write: bool) -> str | None:
    """The checkpoint to continue from: `resume: auto` takes the latest one of this same config.

    Checkpoints left by a run of another config (the user changed a setting and re-ran) are not
    this run's past: they are removed, and the run starts from step 0."""
    t = cfg.train
    if t.resume and t.resume != "auto":
        return t.resume
    ckpts = out / "checkpoints"
    if t.resume != "auto" or not ckpts.is_dir():
        return None
    old = out / "config.resolved.yaml"
    same = old.is_file() and _comparable(yaml.safe_load(old.read_text())) == _comparable(cfg.to_dict())
    if not same:
        log.warning("%s holds checkpoints of a different config; starting from step 0", out)
        if write:
            shutil.rmtree(ckpts, ignore_errors=True)
            (out / "steps.csv").unlink(missing_ok=True)
        return None
    last = last_complete_checkpoint(ckpts)
    if last:
        log.info("resuming from %s", last)
    return last


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


def _comparable(d: dict) -> dict:
    d = {**d, "train": {k: v for k, v in d.get("train", {}).items() if k != "resume"}}
    return json.loads(json.dumps(d))
