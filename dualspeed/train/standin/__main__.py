"""Pretrain one tiny stand-in, alone: the CLIP on image-caption pairs, or the LLM on text.

    python -m dualspeed.train.standin --spec '<stand-in config as JSON>'     what the pipeline passes

The run directory holds config.resolved.yaml, provenance.json (with what the stand-in saw), steps.csv, hf/ (the
model in its Hugging Face format, with its tokenizer) and timing.json, written last.
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import torch
import yaml

from ... import cli, provenance
from .config import load


def run(spec: dict, force: bool = False) -> dict:
    cfg = load(spec)
    out = Path(cfg.output_dir)
    resolved = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    old = out / "config.resolved.yaml"
    if (out / "timing.json").is_file() and old.is_file() and not force:
        if old.read_text() == resolved:
            return json.loads((out / "timing.json").read_text())
        raise RuntimeError(f"{out} holds a finished stand-in of another config; nothing was changed. Point output_dir "
                           "elsewhere, or pass --force to replace it.")
    for stale in ("hf", "timing.json", "steps.csv"):
        p = out / stale
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    old.write_text(resolved)
    torch.manual_seed(cfg.train.seed)
    if cfg.kind == "clip":
        from .clip import train
    else:
        from .llm import train
    stats, saw = train(cfg, out)
    provenance.write(out, {"stand_in": cfg.kind, "seed": cfg.train.seed, "saw": saw})
    timing = {"stage": f"standin_{cfg.kind}", **stats, "saw": saw,
              "device": f"cpu x{torch.get_num_threads()}"}
    provenance.write_json(out / "timing.json", timing)
    return timing


def main(argv=None):
    ap = cli.ArgumentParser(prog="python -m dualspeed.train.standin", description=__doc__)
    ap.add_argument("--spec", required=True, help="the stand-in's config as a JSON mapping")
    ap.add_argument("--force", action="store_true", help="replace a finished stand-in of another config")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        spec = json.loads(a.spec)
    except json.JSONDecodeError as e:
        ap.error(f"--spec is not valid JSON ({e}); it takes the stand-in's config as one JSON mapping")
    print(json.dumps(run(spec, force=a.force)))


if __name__ == "__main__":
    main()
