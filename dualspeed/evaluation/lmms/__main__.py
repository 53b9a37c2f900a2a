"""Evaluate one checkpoint in one or more inference modes through the lmms-eval CLI, offline.

    python -m dualspeed.evaluation.lmms --ckpt runs/.../hf --mode pruned --tasks synth_colour,synth_count \\
        --include-path resources/synth/lmms_tasks --out results/metrics/.../pruned.json
    python -m dualspeed.evaluation.lmms ... --mode normal,pruned,pruned_noiso --out 'results/metrics/.../{mode}.json'
"""
from __future__ import annotations

import os
from pathlib import Path

from ... import cli
from ...models import clip_text
from ...modes import INFERENCE_MODES
from ..predictor import check_pruning
from ..runner import run_modes
from .run import run


def main(argv=None):
    ap = cli.ArgumentParser(prog="python -m dualspeed.evaluation.lmms", description=__doc__)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--mode", default="normal", help=f"one or more of {', '.join(INFERENCE_MODES)}, comma-separated")
    ap.add_argument("--method", help="VTP method for pruned modes (default: the run's own)")
    ap.add_argument("--ratio", type=float, help="p for pruned modes (default: the run's own; required for a run that "
                    "never pruned, the baseline)")
    ap.add_argument("--tasks", required=True)
    ap.add_argument("--include-path", default="", help="folders of lmms-eval task YAMLs, os.pathsep-separated")
    ap.add_argument("--hf-home", default="", help="HF cache holding the converted benchmarks (real recipes)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clip-text", default="auto", help=clip_text.EVAL_HELP)
    ap.add_argument("--pdrop-layers", help="pdrop mode on a checkpoint trained without PyramidDrop, e.g. 1,2,3")
    ap.add_argument("--pdrop-lam", type=float, default=0.5)
    ap.add_argument("--point", default="{}")
    ap.add_argument("--out", required=True, help="output JSON; with several modes a template with '{mode}'")
    a = ap.parse_args(argv)
    try:  # a pruned mode's method and p, checked before the checkpoint loads
        check_pruning(a.ckpt, a.mode.split(","), a.method, a.ratio)
    except ValueError as e:
        ap.error(str(e))
    if not (Path(a.ckpt) / "config.json").is_file():
        raise SystemExit(f"no checkpoint at {a.ckpt} (expected a finished run's hf/ dir with config.json)")
    # offline, and the converted benchmarks' cache, before lmms-eval (and datasets) are imported
    os.environ.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    if a.hf_home:
        os.environ["HF_HOME"] = str(Path(a.hf_home).resolve())
    run_modes(a.ckpt, a.mode, a.out, lambda mode, out: run(a, mode, out))


if __name__ == "__main__":
    main()
