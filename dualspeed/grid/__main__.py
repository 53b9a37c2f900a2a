"""The run config of any training of a grid, as the pipeline passes it to its job: to read, or to train by hand.

    python -m dualspeed.grid points [--configfile FILE ...]
        every training the grid plans: its stand-ins, pretraining runs and SFT points
    python -m dualspeed.grid spec sft dualspeed/divprune/p0.9/r0.1/s0 [--configfile FILE ...] > run.yaml
    python -m dualspeed.grid spec pretrain divprune_p0.9_iso_s0
    python -m dualspeed.grid spec standin llm --json
        that training's run config, as YAML (--json: as JSON, what --spec takes)
    python -m dualspeed.train --config run.yaml [--set train.max_steps=10 ...]
        trains it, as the pipeline's job would (docs/training-by-hand.md)

The config is config/config.yaml with each --configfile merged over it, in order, as Snakemake merges them, checked
as the plan checks it (a wrong key, value or path is refused naming the key). Run from the repository root.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from .. import cli
from . import folders, plan_check, recipe
from .plan_error import PlanError
from .variants import all_points

DEFAULT = Path("config/config.yaml")
SCHEMA = Path("workflow/schemas/config.schema.yaml")


def _read(path: Path) -> dict:
    if not path.is_file():
        raise PlanError(f"config file {path} does not exist (run from the repository root)")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise PlanError(f"config file {path} is not valid YAML: {e}") from None


def pipeline_config(configfiles: list[str]) -> dict:
    """The config every job of the pipeline is planned from: merged, checked, the schema's defaults filled in, and
    the folders of a grid on other data than the default's derived (workflow/rules/common.smk does the same)."""
    from snakemake.utils import validate  # fills the schema's defaults, as the workflow's validate()

    cfg = _read(DEFAULT)
    for f in configfiles:
        cfg = folders.merge(cfg, _read(Path(f)))
    cfg = plan_check.check(cfg, SCHEMA)
    validate(cfg, str(SCHEMA.resolve()))
    return folders.own_folders(cfg, folders.committed_grids(DEFAULT.parent))[0]


def trainings(cfg: dict) -> dict[str, dict[str, str]]:
    """stage -> {name: what it is} of every training the grid plans."""
    pts = all_points(cfg["grid"])
    out = {"standin": {k: f"the tiny {'CLIP' if k == 'clip' else 'LLM'} stand-in" for k in recipe.STANDINS}
           if cfg["model"]["source"] == "tiny" else {}}
    out["pretrain"] = {pt.pretrain_tag: "pretraining" for pt in sorted(pts)} if recipe.has_pretraining(cfg) else {}
    out["sft"] = {pt.path: "SFT" for pt in sorted(pts)}
    return out


def spec(cfg: dict, stage: str, name: str) -> dict:
    known = trainings(cfg)[stage]
    if name not in known:
        shown = ", ".join(list(known)[:8]) + (f", ... ({len(known)} in all: `python -m dualspeed.grid points`)"
                                               if len(known) > 8 else "")
        raise PlanError(f"'{name}' is not a {stage} training of this grid; its {stage} trainings: {shown or 'none'}")
    if stage == "standin":
        return recipe.standin_spec(cfg, name)
    pts = {pt.pretrain_tag if stage == "pretrain" else pt.path: pt for pt in all_points(cfg["grid"])}
    return (recipe.pretrain_spec if stage == "pretrain" else recipe.sft_spec)(cfg, pts[name])


def main(argv=None) -> int:
    ap = cli.ArgumentParser(prog="python -m dualspeed.grid", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    for name, what in (("points", "list every training of the grid"), ("spec", "print one training's run config")):
        p = sub.add_parser(name, help=what, description=__doc__)
        if name == "spec":
            p.add_argument("stage", choices=["standin", "pretrain", "sft"])
            p.add_argument("name", help="a stand-in (clip, llm), a pretraining tag or an SFT point, as `points` lists")
            p.add_argument("--json", action="store_true", help="print JSON (what --spec takes) instead of YAML")
        p.add_argument("--configfile", nargs="+", action="extend", default=[], metavar="FILE",
                       help="config files merged over config/config.yaml, in order (as snakemake --configfile)")
    a = ap.parse_args(argv)
    try:
        cfg = pipeline_config(a.configfile)
        if a.command == "points":
            for stage, names in trainings(cfg).items():
                for n in names:
                    print(f"{stage} {n}")
            return 0
        run = spec(cfg, a.stage, a.name)
    except PlanError as e:
        print(f"python -m dualspeed.grid: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(run))
        return 0
    files = " ".join(a.configfile)
    how = (f"python -m dualspeed.train.standin --spec \"$(python -m dualspeed.grid spec standin {a.name} --json"
           + (f" --configfile {files}" if files else "") + ')"' if a.stage == "standin"
           else "python -m dualspeed.train --config <this file>")
    print(f"# the run config of {a.stage} {a.name} of config/config.yaml" + "".join(f" + {f}" for f in a.configfile)
          + f", as the pipeline's job gets it\n# train it: {how}")
    print(yaml.safe_dump(run, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
