"""One inference mode of one checkpoint through the lmms-eval CLI, offline (`python -m dualspeed.evaluation.lmms`).

Writes the normalised metrics JSON the report reads (a score per benchmark in %, visual tokens per
sample, samples/s) and keeps lmms-eval's raw outputs in <out stem>_raw/. Every mode runs lmms-eval's
own CLI entry (`cli_evaluate`, the same arguments as `python -m lmms_eval`) in this one process, so
lmms-eval and torch are imported once per checkpoint rather than once per mode.
"""
from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

from ... import provenance

# Judge-scored benchmarks: lmms-eval would call a GPT judge; here they run predict-only.
PREDICT_ONLY = {"mmvet", "llava_in_the_wild"}


def primary_score(task: str, metrics: dict) -> float | None:
    """The task's first reported metric, in % when it is a fraction."""
    for key, value in metrics.items():
        if key == "alias" or "stderr" in key or not isinstance(value, (int, float)):
            continue
        return 100.0 * value if 0.0 <= value <= 1.0 else float(value)
    return None


def _index_each_folder_once() -> None:
    """lmms-eval's CLI builds a TaskManager per call, and each indexes every task YAML lmms-eval ships (2.6 s on the
    slow 2-core machine, a fifth of a 3-mode evaluation job of the tiny grid). Within one process the folders do not
    change, so each is indexed once; the index is a pure function of the folder's YAMLs, and each call gets its own
    copy of it."""
    from lmms_eval.tasks import TaskManager

    if getattr(TaskManager, "_dualspeed_memo", None) is not None:
        return
    index, memo = TaskManager._get_task_and_group, {}

    def indexed(self, task_dir: str):
        key = os.path.realpath(task_dir)
        if key not in memo:
            memo[key] = index(self, task_dir)
        return copy.deepcopy(memo[key])

    TaskManager._get_task_and_group, TaskManager._dualspeed_memo = indexed, memo


def _cli(args: list[str], include: list[str]) -> None:
    """lmms-eval's CLI entry, in this process: it reads its arguments from sys.argv. Task folders go in as a list,
    which its TaskManager takes and its --include_path (one folder) does not: the local tasks and a user's own."""
    import argparse

    from lmms_eval.__main__ import cli_evaluate

    _index_each_folder_once()
    saved = sys.argv
    sys.argv = ["lmms_eval", *args]
    try:
        cli_evaluate(argparse.Namespace(include_path=include or None))
    except SystemExit as e:
        if e.code not in (None, 0):
            raise SystemExit(f"lmms-eval exited with {e.code}; see the log above") from e
    finally:
        sys.argv = saved


def run(a, mode: str, out: str) -> dict:
    out = Path(out)
    raw = out.with_name(out.stem + "_raw")
    raw.mkdir(parents=True, exist_ok=True)
    stats = raw / "dualspeed_stats.json"
    # batch_size and device reach the model through lmms-eval's own --batch_size / --device
    model_args = [f"pretrained={a.ckpt}", f"mode={mode}", f"dtype={a.dtype}", f"stats_out={stats}", f"seed={a.seed}",
                  f"clip_text={a.clip_text}"]
    if getattr(a, "pdrop_layers", None):  # lmms-eval splits model_args on commas
        model_args += [f"pdrop_layers={a.pdrop_layers.replace(',', ':')}", f"pdrop_lam={a.pdrop_lam}"]
    if a.method:
        model_args.append(f"method={a.method}")
    if a.ratio is not None:
        model_args.append(f"ratio={a.ratio}")
    base = ["--model", "dualspeed_llava", "--model_args", ",".join(model_args), "--output_path", str(raw),
            "--log_samples", "--batch_size", str(a.batch_size), "--device", a.device, "--seed", str(a.seed)]
    include = [p for p in a.include_path.split(os.pathsep) if p]
    if a.limit:
        base += ["--limit", str(a.limit)]
    tasks = a.tasks.split(",")
    scored = [t for t in tasks if t not in PREDICT_ONLY]
    judged = [t for t in tasks if t in PREDICT_ONLY]

    def lmms_eval(names, *extra):
        cmd = base + ["--tasks", ",".join(names), *extra]
        print("+ lmms_eval", " ".join(cmd), "| task folders:", include, flush=True)
        _cli(cmd, include)

    if judged:  # the judge would need a GPT API: keep the predictions, score nothing
        lmms_eval(judged, "--predict_only")
    results = {}
    if scored:
        before = set(raw.rglob("*_results.json"))
        lmms_eval(scored)
        found = sorted(set(raw.rglob("*_results.json")) - before, key=lambda p: p.stat().st_mtime)
        if not found:
            raise SystemExit(f"lmms-eval wrote no *_results.json under {raw}")
        results = json.loads(found[-1].read_text())["results"]
    scores = {}
    for task in scored:
        if task not in results:
            raise SystemExit(f"lmms-eval reported nothing for task '{task}' (reported: {sorted(results)})")
        score = primary_score(task, results[task])
        if score is None:
            raise SystemExit(f"task '{task}' has no numeric metric in {results[task]}")
        scores[task] = score
    summary = json.loads(stats.read_text()) if stats.is_file() else {}
    return {"point": json.loads(a.point), "checkpoint": a.ckpt, "backend": "lmms_eval", "mode": mode, "scores": scores,
            "mean": sum(scores.values()) / len(scores) if scores else None, "predict_only": judged,
            "raw_dir": str(raw),
            "note": "judge-scored tasks ran predict-only: their predictions are in the raw outputs, unscored"
            if judged else "", **summary, "provenance": provenance.collect()}
