"""The loop every evaluator shares: a checkpoint evaluated in each inference mode asked for, one metrics file
per mode, and one evaluation where two modes are the same computation (mode_plan)."""
from __future__ import annotations

import json
from pathlib import Path

from .. import provenance
from ..models.checkpoint import read_meta
from .predictor import mode_plan


def out_paths(out: str | None, modes: list[str]) -> dict[str, str | None]:
    """mode -> output file; several modes need a '{mode}' in --out."""
    if out and len(modes) > 1 and "{mode}" not in out:
        raise SystemExit(f"--out '{out}' names one file for {len(modes)} modes: put '{{mode}}' in it")
    return {m: (out.replace("{mode}", m) if out else None) for m in modes}


def same_as(res: dict, mode: str, source: str) -> dict:
    """The result of `source` written as `mode`'s, saying so: the run trained no isolator to leave out."""
    return {**res, "mode": mode, "same_as": source,
            "note": f"{mode} is {source} inference for a run that trained no isolator: evaluated once"}


def run_modes(ckpt: str, modes: str, out: str | None, evaluate_one) -> None:
    """Evaluate a checkpoint in each of the comma-separated modes (one evaluation where two are the same
    computation) and write or print each result. evaluate_one(mode, out_path) -> the metrics dict."""
    plan = mode_plan(read_meta(Path(ckpt)), modes.split(","))
    outs = out_paths(out, [m for m, _ in plan])
    done = {}
    for mode, source in plan:
        done[mode] = same_as(done[source], mode, source) if source else evaluate_one(mode, outs[mode])
        print(provenance.write_json(outs[mode], done[mode]) if outs[mode] else json.dumps(done[mode], indent=2))
