"""Inference throughput of one checkpoint in each inference mode, rounds interleaved in one process.

    python -m dualspeed.bench throughput --ckpt runs/tiny/sft/.../hf [--data resources/synth]
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..evaluation.predictor import Predictor, Query
from ..modes import INFERENCE_MODES


def eval_data_of(ckpt: str, data: str | None) -> str:
    """The synthetic data the checkpoint was trained on (its run's config.resolved.yaml), unless given."""
    if data is None:
        resolved = Path(ckpt).parent / "config.resolved.yaml"
        if resolved.is_file():
            data = str(Path(yaml.safe_load(resolved.read_text())["data"]["json"]).parent)
    if data is None or not (Path(data) / "eval_count.json").is_file():
        raise SystemExit(f"--data: no synthetic held-out set eval_count.json under {data or '(unknown)'}; "
                         f"{ckpt} is not a finished run on synthetic data, so pass --data <synthetic data root>")
    return data


def eval_throughput(ckpt: str, data: str | None = None, rounds: int = 3, n: int = 200, batch_size: int = 64,
                    method: str | None = None, ratio: float | None = None) -> dict:
    """Inference samples/s of one checkpoint in each mode, rounds interleaved in one process; the pruned modes with
    the run's own method and p, or those given (a run that never pruned has no p of its own)."""
    data = eval_data_of(ckpt, data)
    rows = json.loads((Path(data) / "eval_count.json").read_text())[:n]
    queries = [Query(r["question"], Path(data) / r["image"]) for r in rows]
    preds = {m: Predictor(ckpt, mode=m, batch_size=batch_size, method=method, ratio=ratio) for m in INFERENCE_MODES}
    for p in preds.values():  # burn-in
        p.predict(queries[:batch_size])
        p.stats.update(samples=0, seconds=0.0, visual_tokens=0, images=0)
    for _ in range(rounds):
        for p in preds.values():
            p.predict(queries)
    out = {m: p.summary() for m, p in preds.items()}
    base = out["normal"]["samples_per_s"]
    return {m: {"samples_per_s": s["samples_per_s"], "visual_tokens_per_sample": s["visual_tokens_per_sample"],
                "speedup_vs_normal": s["samples_per_s"] / base} for m, s in out.items()}


def add_arguments(ap) -> None:
    ap.add_argument("--ckpt", required=True, help="a finished run's hf/ directory")
    ap.add_argument("--data", help="synthetic data root holding eval_count.json (default: the data the "
                                   "checkpoint's run trained on, from its config.resolved.yaml)")
    ap.add_argument("--method", help="VTP method of the pruned modes (default: the run's own)")
    ap.add_argument("--ratio", type=float, help="p of the pruned modes (default: the run's own; needed for a run "
                                                "that never pruned, the baseline)")


def command(a) -> int:
    try:
        print(json.dumps(eval_throughput(a.ckpt, a.data, method=a.method, ratio=a.ratio), indent=2))
    except ValueError as e:  # a pruned mode's method or p (evaluation/predictor.py: check_pruning)
        raise SystemExit(f"python -m dualspeed.bench throughput: {e}") from None
    return 0
