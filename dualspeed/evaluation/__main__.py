"""Evaluate a checkpoint on the synthetic held-out sets, in one or more inference modes.

    python -m dualspeed.evaluation --ckpt runs/x/sft/hf --data resources/synth --mode normal
    python -m dualspeed.evaluation --ckpt runs/x/sft/hf --data resources/synth --mode normal,pruned,pruned_noiso \\
        --out 'results/metrics/x/{mode}.json'      # every mode in one process, one file each

The lmms-eval benchmarks: `python -m dualspeed.evaluation.lmms`.
"""
from __future__ import annotations

import json

from transformers import set_seed

from .. import cli, provenance
from ..models import clip_text
from ..data.synth_tasks import TASKS
from ..modes import INFERENCE_MODES
from .predictor import check_pruning, pdrop_settings
from .runner import run_modes
from .synthetic import evaluate


def main(argv=None):
    ap = cli.ArgumentParser(prog="python -m dualspeed.evaluation", description=__doc__)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--mode", default="normal", help=f"one or more of {', '.join(INFERENCE_MODES)}, comma-separated")
    ap.add_argument("--tasks", default=",".join(f"synth_{t}" for t in TASKS))
    ap.add_argument("--limit", type=int, default=0, help="first N questions per task; 0 = all")
    ap.add_argument("--method", help="VTP method for pruned modes (default: the run's own)")
    ap.add_argument("--ratio", type=float, help="p for pruned modes (default: the run's own; required for a run that "
                    "never pruned, the baseline)")
    ap.add_argument("--point", default="{}", help="JSON describing the grid point, copied into the output")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--seed", type=int, default=0, help="seeds everything random (the `random` VTP method)")
    ap.add_argument("--clip-text", default="auto", help=clip_text.EVAL_HELP)
    ap.add_argument("--pdrop-layers", help="pdrop mode on a checkpoint trained without PyramidDrop: drop after these "
                    "layers, e.g. 1,2,3 (a PyramidDrop checkpoint uses its own)")
    ap.add_argument("--pdrop-lam", type=float, default=0.5, help="pdrop mode: each stage's keep ratio (with --pdrop-layers)")
    ap.add_argument("--out", help="output JSON; with several modes a template with '{mode}'")
    a = ap.parse_args(argv)
    try:  # a pruned mode's method and p, checked before the checkpoint loads
        check_pruning(a.ckpt, a.mode.split(","), a.method, a.ratio)
    except ValueError as e:
        ap.error(str(e))

    def one(mode: str, _out) -> dict:
        set_seed(a.seed)  # each mode draws the same random stream, as in a job of its own
        res = evaluate(a.ckpt, a.data, a.tasks.split(","), mode, a.limit or None, batch_size=a.batch_size,
                       method=a.method, ratio=a.ratio, device=a.device, dtype=a.dtype, seed=a.seed,
                       clip_text=a.clip_text, pdrop=pdrop_settings(a.pdrop_layers, a.pdrop_lam))
        return {"point": json.loads(a.point), "checkpoint": a.ckpt, "backend": "synthetic", "mode": mode, **res,
                "provenance": provenance.collect()}

    run_modes(a.ckpt, a.mode, a.out, one)


if __name__ == "__main__":
    main()
