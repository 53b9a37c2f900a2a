"""Exact-match accuracy of a checkpoint on the synthetic held-out sets (no lmms-eval needed).

    python -m dualspeed.evaluate --ckpt runs/x/sft/hf --data resources/synth --mode normal
    python -m dualspeed.evaluate --ckpt runs/x/sft/hf --data resources/synth --mode normal,pruned,pruned_noiso \
        --out 'results/metrics/x/{mode}.json'      # every mode in one process, one file each
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from tqdm import tqdm
from transformers import set_seed

from . import cli
from . import provenance
from .checkpoint import read_meta
from .infer import Predictor, Query, mode_plan
from .modes import INFERENCE_MODES
from .synth import TASKS


def normalize(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def evaluate(ckpt, data_dir, tasks=TASKS, mode="normal", limit=None, **kw) -> dict:
    data_dir = Path(data_dir)
    pred = Predictor(ckpt, mode=mode, **kw)
    scores = {}
    for task in tasks:
        name = task.removeprefix("synth_")  # same task names as the lmms-eval backend
        path = data_dir / f"eval_{name}.json"
        if name not in TASKS or not path.is_file():
            raise FileNotFoundError(f"no held-out set for task '{task}' ({path}); known: "
                                    f"{', '.join('synth_' + t for t in TASKS)}")
        rows = json.loads(path.read_text())[:limit]
        with tqdm(total=len(rows), desc=f"{task} ({mode})", unit="q") as bar:
            answers = pred.predict([Query(r["question"], data_dir / r["image"]) for r in rows], progress=bar)
        scores[task] = 100.0 * sum(normalize(a) == normalize(r["answer"]) for a, r in zip(answers, rows)) / len(rows)
    return {"scores": scores, "mean": sum(scores.values()) / len(scores), **pred.summary()}


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


def main(argv=None):
    ap = cli.ArgumentParser(description=__doc__)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--mode", default="normal", help=f"one or more of {', '.join(INFERENCE_MODES)}, comma-separated")
    ap.add_argument("--tasks", default=",".join(f"synth_{t}" for t in TASKS))
    ap.add_argument("--limit", type=int, default=0, help="first N questions per task; 0 = all")
    ap.add_argument("--method", help="VTP method for pruned modes (default: the run's own)")
    ap.add_argument("--ratio", type=float, help="p for pruned modes (default: the run's own)")
    ap.add_argument("--point", default="{}", help="JSON describing the grid point, copied into the output")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--seed", type=int, default=0, help="seeds everything random (the `random` VTP method)")
    ap.add_argument("--out", help="output JSON; with several modes a template with '{mode}'")
    a = ap.parse_args(argv)

    def one(mode: str, _out) -> dict:
        set_seed(a.seed)  # each mode draws the same random stream, as in a job of its own
        res = evaluate(a.ckpt, a.data, a.tasks.split(","), mode, a.limit or None, batch_size=a.batch_size,
                       method=a.method, ratio=a.ratio, device=a.device, dtype=a.dtype, seed=a.seed)
        return {"point": json.loads(a.point), "checkpoint": a.ckpt, "backend": "synthetic", "mode": mode, **res,
                "provenance": provenance.collect()}

    run_modes(a.ckpt, a.mode, a.out, one)


if __name__ == "__main__":
    main()
