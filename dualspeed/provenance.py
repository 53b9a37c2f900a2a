"""What produced a run: git commit, package versions and the lock they should match, host, command line."""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import envlock

PACKAGES = ["dualspeed", "torch", "torchvision", "transformers", "tokenizers", "peft", "accelerate", "deepspeed",
            "lmms-eval", "snakemake", "pandas", "matplotlib"]


def git_state(cwd: Path | None = None) -> dict:
    cwd = cwd or Path(__file__).resolve().parent

    def run(*args):
        try:
            return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": run("rev-parse", "HEAD") or "unknown", "dirty": bool(run("status", "--porcelain"))}


def versions() -> dict:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = None
    return out


def collect() -> dict:
    import torch

    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv,
        "git": git_state(),
        "packages": versions(),
        # the lock's hash and every installed package that differs from it (empty: the environment is the lock)
        "environment": envlock.provenance(),
        "python": sys.version.split()[0],
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cuda": torch.cuda.is_available(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "torch_threads": torch.get_num_threads(),
    }


def write(run_dir: str | Path, extra: dict | None = None) -> dict:
    info = collect() | (extra or {})
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "provenance.json").write_text(json.dumps(info, indent=2))
    return info


def write_json(path: str | Path, obj, indent: int | None = 2) -> str:
    """Write JSON via a temp file and rename, so a killed job never leaves a half-written result. The temp
    name is the writer's own: jobs that share a file (the data check's cache) never rename each other's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=indent)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return text
