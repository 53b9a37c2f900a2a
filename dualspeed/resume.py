"""Which checkpoint a run continues from (`train.resume`)."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import yaml

from .config import RunConfig

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
