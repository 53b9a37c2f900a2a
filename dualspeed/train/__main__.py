"""Train one stage of one run.

    python -m dualspeed.train --config run.yaml [--set train.lr=1e-3 ...]
    python -m dualspeed.train --spec '<run config as JSON>'      what the pipeline passes
"""
from __future__ import annotations

import json
import logging
import sys

import torch

from .. import cli
from ..config import load_config
from .run import run


def parse_args(argv=None):
    ap = cli.ArgumentParser(prog="python -m dualspeed.train", description=__doc__)
    ap.add_argument("--config", help="YAML run config")
    ap.add_argument("--spec", help="run config as a JSON mapping (what the pipeline passes); --config and --set apply on top")
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="override config keys, e.g. --set train.lr=1e-3 --set train.epochs=2 (every one applies)")
    ap.add_argument("--force", action="store_true",
                    help="replace a finished run of a different config in the output directory (refused without it)")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = load_config(args.config, args.set, base=json.loads(args.spec) if args.spec else None)
    timing = run(cfg, force=args.force)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # every rank waits for rank 0's export, then the group is torn down before the interpreter exits: a rank
        # leaving with its gloo/NCCL threads still alive aborted now and then ("terminate called without an
        # active exception", SIGABRT), failing the launch after a finished run
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    print(json.dumps(timing))


if __name__ == "__main__":
    main()
