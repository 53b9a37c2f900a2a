"""The data commands.

    python -m dualspeed.data check --json FILE --image-folder DIR [--workers N]   every sample and image checked
    python -m dualspeed.data synth --out resources/synth --seed 0                  the synthetic data set
    python -m dualspeed.data local --out resources/mine --sft-json F --image-folder D [--tiny]   your own data
    python -m dualspeed.data fetch file --entry '<json>' --stamp resources/downloads/x.ok
    python -m dualspeed.data fetch benchmark --entry gqa --cache resources/hf_home --stamp resources/benchmarks/gqa.ok
"""
from __future__ import annotations

from .. import cli
from . import check, fetch, local, synth

COMMANDS = {"check": check, "synth": synth, "local": local, "fetch": fetch}


def main(argv=None) -> int:
    ap = cli.ArgumentParser(prog="python -m dualspeed.data", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__)
        module.add_arguments(p)
    a = ap.parse_args(argv)
    return COMMANDS[a.command].command(a)


if __name__ == "__main__":
    raise SystemExit(main())
