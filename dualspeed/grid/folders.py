"""Where a grid writes - its runs, metrics and tables, figures, logs and the data it derives - kept apart from the
embedded default's (config/config.yaml) whenever its data differs from the default's.

An overlay is merged over config/config.yaml, so an overlay that sets only `data:` (and `eval:`) would keep the
default's `recipe: tiny`, `runs_dir: runs/tiny`, `results_dir: results`, `figures_dir: paper_figures` and
`data.root: resources/synth`, and its jobs would overwrite the default's stand-in data, runs and tables. So each of
those keys still at the default's value is derived instead: `runs/<name>`, `results/<name>`,
`paper_figures/<name>`, `resources/<name>`, logs under `logs/<name>`, where <name> is the config's own recipe, or
for a config that keeps the default's, one derived from the data (`own-<data folder>-<hash>` for data on disk,
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


def own_folders(cfg: dict, default: dict) -> tuple[dict, str | None]:
    """-> (cfg with every folder key that is still the default's derived from its recipe or data, a line saying so
    or None). A config with the default's data keeps its folders (config/full.yaml adds rows to the default's)."""
    if data_identity(cfg) == data_identity(default):
        return cfg, None
    taken = {k: _get(default, k) for k in FOLDER_KEYS}
    clash = [k for k in FOLDER_KEYS if _get(cfg, k) == taken[k]]
    if not clash:
        return cfg, None
    out = copy.deepcopy(cfg)
    name = data_name(cfg) if "recipe" in clash else cfg["recipe"]
    for key in clash:
        _set(out, key, name if key == "recipe" else f"{BASE[key]}/{name}")
    still = [k for k in FOLDER_KEYS if _get(out, k) in set(taken.values())]
    if still:
        raise PlanError(f"config key '{still[0]}' is {_get(out, still[0])!r}, a folder of the default grid "
                        "(config/config.yaml), whose data this config does not share; set "
                        + ", ".join(FOLDER_KEYS) + " to folders of its own")
    note = (f"This grid's data differs from the default's (config/config.yaml), so it writes where the default does "
            f"not: {', '.join(f'{k}: {_get(out, k)}' for k in clash)} (derived from "
            f"{'the data' if 'recipe' in clash else 'recipe'}; set {', '.join(clash)} to choose).")
    return out, note
