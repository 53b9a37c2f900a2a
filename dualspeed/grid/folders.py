"""Where a grid writes - its runs, metrics and tables, figures, logs and the data it derives - kept apart from the
folders of every grid this repository defines (the embedded default's above all) whenever its data differs.

An overlay is merged over config/config.yaml, so an overlay that sets only `data:` (and `eval:`) would keep the
default's `recipe: tiny`, `runs_dir: runs/tiny`, `results_dir: results`, `figures_dir: paper_figures` and
`data.root: resources/synth`, and its jobs would overwrite the default's stand-in data, runs and tables. So each of
those keys still at the default's value is derived instead: `runs/<name>`, `results/<name>`,
`paper_figures/<name>`, `resources/<name>`, logs under `logs/<name>`, where <name> is the config's own recipe, or
for a config that keeps the default's, one derived from the data. The same holds against config/smoke.yaml and the
other committed grids (COMMITTED) (`own-<data folder>-<hash>` for data on disk,
`synth-<hash>` for other synthetic settings). The plan says so on its first lines.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

from . import recipe
from .plan_error import PlanError

FOLDER_KEYS = ("recipe", "runs_dir", "results_dir", "figures_dir", "data.root")
BASE = {"runs_dir": "runs", "results_dir": "results", "figures_dir": "paper_figures", "data.root": "resources"}
DATA_FILES = ("pretrain_json", "pretrain_image_folder", "sft_json", "image_folder")


def _get(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _set(cfg: dict, dotted: str, value) -> None:
    *head, last = dotted.split(".")
    node = cfg
    for part in head:
        node = node.setdefault(part, {})
    node[last] = value


def data_identity(cfg: dict) -> dict:
    """What decides the data a grid trains and is evaluated on: the kind; for synthetic data the generator's settings
    with the image geometry of the model that reads them; for files on disk the files (absolute) and the local
    evaluation tasks written beside what the pipeline derives."""
    d = cfg["data"]
    ident: dict = {"kind": d["kind"]}
    if d["kind"] == "synthetic":
        ident["synth"] = recipe.synth_settings(cfg)
    else:
        ident["files"] = {k: str(Path(d[k]).resolve()) for k in DATA_FILES if d.get(k)}
        ident["tasks"] = {name: {k: str(Path(v).resolve()) for k, v in t.items()}
                          for name, t in sorted((cfg.get("eval", {}).get("local_tasks") or {}).items())}
    return ident


def data_name(cfg: dict) -> str:
    """A folder name derived from the data: its kind, the data's own folder for files on disk, and a short hash."""
    ident = data_identity(cfg)
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]
    if ident["kind"] == "synthetic":
        return f"synth-{digest}"
    if ident["kind"] == "local":
        folder = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(ident["files"]["sft_json"]).parent.name).strip("-.")
        return f"own-{folder}-{digest}" if folder else f"own-{digest}"
    return f"{ident['kind']}-{digest}"


# The grids this repository defines: their config files, merged in order over config/config.yaml. A config file
# added to config/ is added here (tests/test_plan_check.py checks that every one is), so its folders are guarded too.
COMMITTED = {"the default grid (config/config.yaml)": [], "config/full.yaml": ["full.yaml"],
             "config/smoke.yaml": ["smoke.yaml"], "config/smoke_next.yaml": ["smoke.yaml", "smoke_next.yaml"],
             "config/smoke_own.yaml": ["smoke.yaml", "smoke_own.yaml"], "config/llava15_7b.yaml": ["llava15_7b.yaml"],
             "config/llava_next_7b.yaml": ["llava_next_7b.yaml"]}


def merge(base: dict, over: dict) -> dict:
    """`over` merged into `base` key by key at every depth (Snakemake's update_config)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def committed_grids(config_dir) -> dict[str, dict]:
    """label -> the merged config of each grid the repository defines (COMMITTED)."""
    import yaml

    config_dir = Path(config_dir)
    read = lambda name: yaml.safe_load((config_dir / name).read_text()) or {}  # noqa: E731
    default = read("config.yaml")
    out = {}
    for label, files in COMMITTED.items():
        cfg = default
        for f in files:
            cfg = merge(cfg, read(f))
        out[label] = cfg
    return out


def folders(cfg: dict) -> dict[str, str]:
    """The folder keys a grid writes under: data.root only for data it writes there (synthetic, local)."""
    keys = [k for k in FOLDER_KEYS if k != "data.root" or cfg["data"]["kind"] in ("synthetic", "local")]
    return {k: _get(cfg, k) for k in keys}


def own_folders(cfg: dict, grids: dict[str, dict]) -> tuple[dict, str | None]:
    """-> (cfg with each folder key it shares with a grid on other data derived from its recipe or data, a line saying
    so or None). `grids`: label -> config of the grids to keep apart from (committed_grids). Grids on the same data
    may share folders (config/full.yaml adds rows to the default's)."""
    ident = data_identity(cfg)
    others = {label: g for label, g in grids.items() if data_identity(g) != ident}
    taken: dict[str, dict[str, str]] = {}  # key -> value -> the grid that writes there
    for label, g in others.items():
        for key, value in folders(g).items():
            taken.setdefault(key, {}).setdefault(value, label)
    clash = {k: taken[k][v] for k, v in folders(cfg).items() if v in taken.get(k, {})}
    if not clash:
        return cfg, None
    out = copy.deepcopy(cfg)
    name = data_name(cfg) if "recipe" in clash else cfg["recipe"]
    for key in clash:
        _set(out, key, name if key == "recipe" else f"{BASE[key]}/{name}")
    still = [k for k, v in folders(out).items() if v in taken.get(k, {})]
    if still:
        raise PlanError(f"config key '{still[0]}' is {_get(out, still[0])!r}, a folder of "
                        f"{taken[still[0]][_get(out, still[0])]}, whose data this config does not share; set "
                        + ", ".join(folders(out)) + " to folders of its own")
    whose = sorted(set(clash.values()))
    note = (f"This grid's data differs from that of {' and '.join(whose)}, whose folders it would write into, so it "
            f"writes elsewhere: {', '.join(f'{k}: {_get(out, k)}' for k in clash)} (derived from "
            f"{'the data' if 'recipe' in clash else 'recipe'}; set {', '.join(clash)} to choose).")
    return out, note
