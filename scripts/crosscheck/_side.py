"""Shared by the golden generators, which run in the side venv (scripts/crosscheck/setup.sh), never in the
project's: make the reference packages importable and record where every golden file came from."""
from __future__ import annotations

import datetime
import importlib.machinery
import importlib.metadata as md
import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"


def stub_wandb() -> None:
    """The DualSpeed fork logs its losses to wandb at import and in forward; nothing of it reaches the outputs."""
    if "wandb" not in sys.modules:
        mod = types.ModuleType("wandb")
        mod.__spec__ = importlib.machinery.ModuleSpec("wandb", None)  # transformers probes find_spec("wandb")
        mod.log = lambda *a, **k: None
        mod.init = lambda *a, **k: None
        sys.modules["wandb"] = mod


def provenance(reference: str, commit: str | None, command: str, **extra) -> dict:
    versions = {}
    for name in ("torch", "transformers", "tokenizers", "sentencepiece", "llava-torch"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return {"reference": reference, "reference_commit": commit, "side_venv": versions, "command": command,
            "project_commit_when_written": head.stdout.strip() or None,
            "written": datetime.date.today().isoformat(), "python": sys.version.split()[0], **extra}
