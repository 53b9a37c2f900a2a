"""Plan-time checks of what the jobs will read: the data files and folders, the evaluation tasks, and the
checkpoints the model starts from. Run by plan_check.check before Snakemake plans a job; each error names the key."""
from __future__ import annotations

import importlib.util
import re
from functools import lru_cache
from pathlib import Path

from ..data.synth_tasks import TASKS as SYNTH_TASKS
from .plan_error import PlanError

@lru_cache(maxsize=1)
def lmms_eval_tasks() -> frozenset[str]:
    """Task and group names of the installed lmms-eval, read from its task YAMLs (no import: fast)."""
    spec = importlib.util.find_spec("lmms_eval")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    pat = re.compile(r"""^\s*(?:task|group):\s*["']?([A-Za-z0-9_.\-]+)["']?\s*(?:#.*)?$""", re.M)
    names: set[str] = set()
    for f in (Path(spec.submodule_search_locations[0]) / "tasks").rglob("*.yaml"):
        names.update(pat.findall(f.read_text(errors="ignore")))
    return frozenset(names)


def _path_problem(key: str, value, want: str) -> str | None:
    ok = Path(value).is_file() if want == "file" else Path(value).is_dir()
    if ok:
        return None
    what = "a JSON file" if want == "file" else "a folder"
    return f"config key '{key}' is {value!r}: no such {want}; give {what} that exists (paths are relative to the " \
           f"directory snakemake runs in, {Path.cwd()})"


def check_local_data(config: dict) -> None:
    """data.kind local: every path the jobs will read exists, named by its key; pretraining data may be absent
    only where the model already has a trained projector (model.source llava: an SFT-only grid, whose model.path
    check_model checks)."""
    d, source = config["data"], config["model"]["source"]
    if d["kind"] != "local":
        given = [k for k in ("pretrain_json", "sft_json", "image_folder", "pretrain_image_folder") if k in d]
        if d["kind"] == "synthetic" and given:  # silently training on generated data would be worse than stopping
            raise PlanError(f"config key 'data.{given[0]}' is set but data.kind is 'synthetic', which generates its "
                            "own data; set data.kind: local to train on your files")
        return
    for key in ("sft_json", "image_folder"):
        if not d.get(key):
            raise PlanError(f"config key 'data.{key}' is missing; data.kind local needs data.sft_json and "
                            "data.image_folder (docs/own-data.md)")
    if not d.get("pretrain_json") and source != "llava":
        raise PlanError(f"config key 'data.pretrain_json' is missing; model.source {source} starts with a fresh "
                        "projector that pretraining must train. Give pretraining data, or start from a llava-hf "
                        "checkpoint (model.source: llava, model.path) for an SFT-only grid")
    checks = [("data.sft_json", d["sft_json"], "file"), ("data.image_folder", d["image_folder"], "dir")]
    if d.get("pretrain_json"):
        checks += [("data.pretrain_json", d["pretrain_json"], "file"),
                   ("data.pretrain_image_folder" if "pretrain_image_folder" in d else "data.image_folder",
                    d.get("pretrain_image_folder", d["image_folder"]), "dir")]
    elif "pretrain_image_folder" in d:
        raise PlanError("config key 'data.pretrain_image_folder' is set without data.pretrain_json; give both or neither")
    for key, name, want in checks:
        why = _path_problem(key, name, want)
        if why:
            raise PlanError(why)


def include_path_tasks(path: str) -> set[str]:
    """Task and group names of the lmms-eval YAMLs under a directory (eval.include_path)."""
    pat = re.compile(r"""^\s*(?:task|group):\s*["']?([A-Za-z0-9_.\-]+)["']?\s*(?:#.*)?$""", re.M)
    return {n for f in Path(path).rglob("*.yaml") for n in pat.findall(f.read_text(errors="ignore"))}


def check_local_tasks(config: dict) -> set[str]:
    """eval.local_tasks and eval.include_path: their paths exist -> the task names they add."""
    e, d = config["eval"], config["data"]
    names = set()
    if e.get("local_tasks") and d["kind"] != "local":
        raise PlanError(f"config key 'eval.local_tasks' is set but data.kind is '{d['kind']}'; allowed with "
                        "data.kind local, whose preparation writes the task files (other data: put lmms-eval task "
                        "YAMLs in a folder and name it in eval.include_path)")
    synth = {f"synth_{t}" for t in SYNTH_TASKS}
    for name, task in (e.get("local_tasks") or {}).items():
        if name in synth:
            raise PlanError(f"config key 'eval.local_tasks.{name}': the name is a synthetic task's; choose another")
        for key, want in (("json", "file"), ("image_folder", "dir")):
            why = _path_problem(f"eval.local_tasks.{name}.{key}", task[key], want)
            if why:
                raise PlanError(why)
        names.add(name)
    if e.get("include_path"):
        why = _path_problem("eval.include_path", e["include_path"], "dir")
        if why:
            raise PlanError(why)
        found = include_path_tasks(e["include_path"])
        if not found:
            raise PlanError(f"config key 'eval.include_path' is {e['include_path']!r}: no lmms-eval task YAML (a "
                            "'task: NAME' line) under it")
        names |= found
    return names


def check_eval_tasks(config: dict) -> None:
    """Every evaluation task must exist before 30 jobs are planned around it."""
    e, synthetic = config["eval"], config["data"]["kind"] == "synthetic"
    local = {f"synth_{t}" for t in SYNTH_TASKS} if synthetic else set()  # written beside the synthetic data
    local |= check_local_tasks(config)
    if e["backend"] == "synthetic":
        if not synthetic:
            raise PlanError("config key 'eval.backend' is 'synthetic' but data.kind is not: the in-process evaluator "
                            "reads the synthetic held-out sets; allowed with other data: lmms_eval")
        known, what = local, "a task of the synthetic evaluator"
    else:
        known, what = local | lmms_eval_tasks(), "a local task (the synthetic data's, eval.local_tasks, " \
            "eval.include_path) or a task of the installed lmms-eval"
    bad = [t for t in e["tasks"] if t not in known]
    if bad:
        shown = sorted(local) or sorted(known)[:12]
        more = "" if len(shown) == len(known) else f", ... ({len(known)} in all; `lmms-eval --tasks list` lists them)"
        raise PlanError(f"config key 'eval.tasks' names {bad}, not {what}; allowed: {', '.join(shown)}{more}")


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# the checkpoint keys each model source reads, and the source that reads each
SOURCE_READS = {"tiny": (), "compose": ("llm", "vision_tower"), "llava": ("path",)}
READ_BY = {"path": "llava", "llm": "compose", "vision_tower": "compose"}


def checkpoint_problem(key: str, value: str) -> str | None:
    """A model reference is a folder holding a Hugging Face config.json, or a hub id (owner/name: fetched by the first
    job that loads it; offline, from the HF cache); anything else is named with its key."""
    p = Path(value).expanduser()
    if p.is_dir():
        if (p / "config.json").is_file():
            return None
        return f"config key '{key}' is {value!r}: the folder holds no config.json; give a Hugging Face checkpoint " \
               "folder or a hub id"
    if not p.exists() and HUB_ID.fullmatch(value) and not value.startswith("."):
        return None
    return f"config key '{key}' is {value!r}: no such folder, and not a hub id (owner/name); give a checkpoint " \
           f"folder (relative paths are relative to {Path.cwd()}) or a hub id such as llava-hf/llava-1.5-7b-hf"


def check_model(config: dict) -> None:
    """The checkpoints model.source reads are given and exist; a checkpoint key the source ignores is refused."""
    m = config["model"]
    source = m["source"]
    for key, owner in READ_BY.items():
        if m.get(key) and key not in SOURCE_READS[source]:
            reads = " and ".join(f"model.{k}" for k in SOURCE_READS[source]) or "model.tiny (no checkpoint)"
            raise PlanError(f"config key 'model.{key}' is {m[key]!r} but model.source is {source}, which reads "
                            f"{reads} and would ignore it; remove model.{key}, or set model.source: {owner}")
    for key in SOURCE_READS[source]:
        if not m.get(key):
            raise PlanError(f"config key 'model.{key}' is missing; model.source {source} needs "
                            + " and ".join(f"model.{k}" for k in SOURCE_READS[source])
                            + (": a llava-hf checkpoint's hub id or folder, e.g. llava-hf/llava-1.5-7b-hf"
                               if source == "llava" else ": hub ids or folders"))
        why = checkpoint_problem(f"model.{key}", m[key])
        if why:
            raise PlanError(why)
