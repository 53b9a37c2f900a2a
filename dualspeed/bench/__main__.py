"""The benchmarks.

    python -m dualspeed.bench step --preset tiny          step time of every variant side by side (CPU or GPU)
    python -m dualspeed.bench vtp --preset 7b-sft         the cost of every VTP method on one training batch
    python -m dualspeed.bench flops --preset 7b-sft       the FLOPs model: compute-limit speedups, inference
    python -m dualspeed.bench flops --config config/llava15_7b.yaml
    python -m dualspeed.bench precision                   fp32 against bf16 autocast, the tiny training steps (CPU)
    python -m dualspeed.bench masks                       transformers' vmap causal mask against the broadcast one (CPU)
    python -m dualspeed.bench throughput --ckpt runs/tiny/sft/.../hf    inference samples/s per inference mode

Presets (dualspeed/bench/presets.py): tiny, tiny-next, 7b-pretrain, 7b-sft, next-7b-sft.
"""
from __future__ import annotations

from .. import cli
from . import flops_report, mask_cost, precision, step_time, throughput, vtp_cost

COMMANDS = {"step": step_time, "vtp": vtp_cost, "flops": flops_report, "throughput": throughput,
            "precision": precision, "masks": mask_cost}


def main(argv=None) -> int:
    ap = cli.ArgumentParser(prog="python -m dualspeed.bench", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__)
        module.add_arguments(p)
    a = ap.parse_args(argv)
    return COMMANDS[a.command].command(a)


if __name__ == "__main__":
    raise SystemExit(main())
