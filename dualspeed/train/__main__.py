"""Train one stage of one run.

    python -m dualspeed.train --config run.yaml [--set train.lr=1e-3 ...]
    python -m dualspeed.train --spec '<run config as JSON>'      what the pipeline passes

The run config (run.yaml) is one stage of one run: output_dir, and the sections model, data, train, fastslow and
pmod; every key, its type and default: dualspeed/config.py (RunConfig). A commented example, and how to get the run
config of any point of a grid exactly as the pipeline's job gets it:

    python -m dualspeed.grid spec sft dualspeed/divprune/p0.9/r0.1/s0 > run.yaml    (python -m dualspeed.grid points)

docs/training-by-hand.md. Keys apply in order: defaults < --spec < --config < --set.
"""
from __future__ import annotations

import json
import sys

from .. import cli


def parse_args(argv=None):
    ap = cli.ArgumentParser(prog="python -m dualspeed.train", description=__doc__)
    ap.add_argument("--config", help="YAML run config (docs/training-by-hand.md)")
    ap.add_argument("--spec", help="run config as a JSON mapping (what the pipeline passes); --config and --set apply on top")
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="override config keys, e.g. --set train.lr=1e-3 --set train.epochs=2 (every one applies)")
    ap.add_argument("--force", action="store_true",
                    help="replace a finished run of a different config in the output directory (refused without it)")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)  # before the heavy imports: --help and a bad option answer at once
    import logging

    from ..config import ConfigError, load_config
    from ..data.samples import DataError

    prog = "python -m dualspeed.train"
    try:
        base = json.loads(args.spec) if args.spec else None
    except json.JSONDecodeError as e:
        sys.exit(f"{prog}: --spec is not valid JSON ({e}); it takes the run config as one JSON mapping")
    if base is not None and not isinstance(base, dict):
        sys.exit(f"{prog}: --spec must be a JSON mapping of run config keys, got {type(base).__name__}")
    try:
        cfg = load_config(args.config, args.set, base=base)
    except ConfigError as e:  # the message names the key: no traceback before it
        sys.exit(f"{prog}: {e}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    import torch

    from .run import run

    try:
        timing = run(cfg, force=args.force)
    except (ConfigError, DataError) as e:  # the data check's verdict, a refused resume: named, not a traceback
        sys.exit(f"{prog}: {e}")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # every rank waits for rank 0's export, then the group is torn down before the interpreter exits: a rank
        # leaving with its gloo/NCCL threads still alive aborted now and then ("terminate called without an
        # active exception", SIGABRT), failing the launch after a finished run
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    print(json.dumps(timing))


if __name__ == "__main__":
    main()
