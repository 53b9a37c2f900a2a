"""Plan-time checks of the pipeline config, run by workflow/rules/common.smk before any job is planned.

Every error's first line names the key path, the bad value and what is allowed. Values given on the
command line (`--config "grid={p: 0.9}"`) reach Snakemake as strings below the top level; they are
converted to the schema's types first, so the command line and an overlay YAML behave alike.
"""
from __future__ import annotations

import importlib.util
import re
from functools import lru_cache
from pathlib import Path

import yaml

from ..config import ConfigError, TrainConfig, batch_plan
from ..data.synth_tasks import TASKS as SYNTH_TASKS
from ..typed_merge import merge
from . import recipe


class PlanError(ValueError):
    pass


# keys that moved, and where their value comes from now
MOVED = {f"data.synth.{k}": f"the synthetic images take their {k.replace('_', ' ')} from the model that reads them, "
         f"model.tiny.{k} (LLaVA-NeXT: the largest square model.image_grid_pinpoints); remove it here"
         for k in ("image_size", "patch_size")}


def _resolve(sub: dict, root: dict) -> dict:
    while isinstance(sub, dict) and "$ref" in sub:
        node = root
        for part in sub["$ref"].lstrip("#/").split("/"):
            node = node[part]
        sub = node
    return sub


def _scalar(text: str, want: str):
    """A command-line string as the schema's scalar type, or None when it is not one."""
    if want == "boolean":
        return {"true": True, "false": False}.get(text.lower())
    try:
        return int(text)
    except ValueError:
        pass
    if want == "number":
        try:
            return float(text)  # also 1e-3, which YAML 1.1 would keep as a string
        except ValueError:
            pass
    return None


def coerce_to_schema(value, schema: dict, root: dict | None = None):
    """-> `value` with strings turned into the numbers/booleans the schema asks for (recursively);
    anything that does not parse is left for validation to report."""
    root = root or schema
    schema = _resolve(schema, root)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {k: coerce_to_schema(v, props[k], root) if k in props else v for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [coerce_to_schema(v, schema["items"], root) for v in value]
    want = schema.get("type")
    if isinstance(value, str) and want in ("number", "integer", "boolean"):
        parsed = _scalar(value.strip(), want)
        if parsed is not None:
            return parsed
    return value


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _allowed(err) -> str:
    v, val = err.validator, err.validator_value
    if v == "enum":
        return f"one of {', '.join(map(str, val))}"
    if v == "type":
        return f"a value of type {val}"
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return {"minimum": ">= ", "maximum": "<= ", "exclusiveMinimum": "> ", "exclusiveMaximum": "< "}[v] + str(val)
    if v == "additionalProperties":
        return f"the keys {', '.join(sorted(err.schema.get('properties', {})))}"
    if v == "required":
        return f"the required keys {', '.join(val)}"
    return f"{v} {val!r}"


def validate_schema(config: dict, schema_path: str | Path) -> dict:
    """Coerce, then validate against the JSON schema -> the coerced config (PlanError on the first problem)."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    schema = yaml.safe_load(Path(schema_path).read_text())
    config = coerce_to_schema(config, schema)
    err = best_match(Draft202012Validator(schema).iter_errors(config))
    if err is None:
        return config
    path = list(err.absolute_path)
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        where = f"unknown config key '{_key(path + extra[:1])}'"
        if _key(path + extra[:1]) in MOVED:
            raise PlanError(f"config validation failed: {where}: {MOVED[_key(path + extra[:1])]}")
    else:
        where = f"config key '{_key(path)}' is {err.instance!r}"
    raise PlanError(f"config validation failed: {where}; allowed: {_allowed(err)}\n"
                    f"  (jsonschema: {err.message}; at {''.join(f'[{p!r}]' for p in path) or 'the top level'})")


def check_methods(config: dict) -> None:
    """Each method spec ('name' or 'name:key=value+...') names a registered method, its options pass the method's
    own spec, and it fits the tokens a crop keeps at every p it runs with, where the config gives the tokens per
    crop (the tiny model): the same check (vtp.check) the run makes when it reads its config."""
    from .. import vtp

    grid, known = config["grid"], vtp.available()
    hint = "; add a file to dualspeed/vtp/ or name it in DUALSPEED_VTP_PLUGINS (README, 'Adding a VTP method')"
    unknown = [m for m in grid["methods"] if vtp.parse(m)[0] not in known]
    if vtp.parse(grid["method"])[0] not in known:
        raise PlanError(f"config key 'grid.method' is {grid['method']!r}, not a registered VTP method; "
                        f"allowed: {', '.join(known)}{hint}")
    if unknown:
        raise PlanError(f"config key 'grid.methods' names unknown VTP method(s) {unknown}; allowed: {', '.join(known)}{hint}")
    n = recipe.crop_tokens(config)
    for key, spec in [("grid.method", grid["method"])] + [("grid.methods", m) for m in grid["methods"]]:
        # the grid's method also runs at every p of the sweep; every method at grid.p
        ps = [grid["p"]] + (list(grid["p_sweep"]) if spec == grid["method"] else [])
        keep = {vtp.keep_count(n, p): f"p={p:g} of the {n} tokens per crop of model.tiny" for p in ps} if n else {}
        try:
            vtp.check(spec, keep)
        except ValueError as e:
            raise PlanError(f"config key '{key}' {'is' if key == 'grid.method' else 'has'} {spec!r}: {e}") from None


def check_synthetic_images(config: dict) -> None:
    """The synthetic images take their geometry from the model (recipe.synth_settings): it must give one."""
    if config["data"]["kind"] == "synthetic":
        try:
            recipe.synth_settings(config)
        except ValueError as e:
            raise PlanError(str(e)) from None


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
    only where the model already has a trained projector (model.source llava: an SFT-only grid)."""
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
    if not d.get("pretrain_json") and not config["model"].get("path"):
        raise PlanError("config key 'model.path' is missing; an SFT-only grid (no data.pretrain_json) starts every row "
                        "from a llava-hf checkpoint: give its hub id or folder, e.g. llava-hf/llava-1.5-7b-hf")
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


def train_world_size(config: dict) -> int:
    """Processes of a training job: GPUs per node (one process on a CPU) x nodes."""
    r = config["resources"]["train"]
    return max(r["gpus"], 1) * r.get("nodes", 1)


def check_batches(config: dict) -> None:
    """Every stage's global batch splits over the training job's processes (config.batch_plan, which each run
    checks again at its start), and only training spans nodes."""
    if config["resources"]["eval"].get("nodes", 1) != 1:
        raise PlanError(f"config key 'resources.eval.nodes' is {config['resources']['eval']['nodes']}; allowed: 1 "
                        "(an evaluation job is one process; resources.train.nodes spreads training over nodes)")
    stages = ("pretrain", "sft")
    own = config.get("pmod", {}).get("train", {})  # the p-MoD row's SFT recipe, over sft.train
    trains = [(f"{s}.train", config[s].get("train", {})) for s in stages]
    if own:
        trains.append(("sft.train with pmod.train", {**config["sft"].get("train", {}), **own}))
    if config.get("pdrop", {}).get("train"):  # PyramidDrop's own SFT recipe, likewise
        trains.append(("sft.train with pdrop.train", {**config["sft"].get("train", {}), **config["pdrop"]["train"]}))
    world = train_world_size(config)
    for where, train in trains:
        t = TrainConfig()
        merge(t, {k: v for k, v in train.items() if k != "stage"}, f"{where}.")
        try:
            batch_plan(t, world)
        except ConfigError as e:
            raise PlanError(f"{where}: {e} (resources.train: {config['resources']['train']['gpus']} GPUs x "
                            f"{config['resources']['train'].get('nodes', 1)} nodes)") from None


def check_pdrop(config: dict) -> None:
    """PyramidDrop's settings against the LLM's depth where the config gives it (the tiny LLM), then each run config
    of a PyramidDrop row whole (config.RunConfig.validate): what a run would refuse at its start, it refuses here,
    naming the key (e.g. PyramidDrop and p-MoD in one run)."""
    from ..config import TinyModelConfig, check_pdrop as check_settings, load_config
    from .variants import all_points

    m = config["model"]
    depth = m.get("tiny", {}).get("llm_layers", TinyModelConfig().llm_layers) if m["source"] == "tiny" else None
    try:
        check_settings(config.get("pdrop", {}), depth)
    except ConfigError as e:
        raise PlanError(f"{e}{f' (model.tiny.llm_layers is {depth})' if depth else ''}") from None
    for pt in (pt for pt in all_points(config["grid"]) if pt.settings["pdrop"]):
        specs = ([("pretraining", recipe.pretrain_spec(config, pt))] if recipe.has_pretraining(config) else []) + \
            [("SFT", recipe.sft_spec(config, pt))]
        for stage, spec in specs:
            try:
                load_config(base=spec)
            except ConfigError as e:
                raise PlanError(f"the {stage} of {pt.path}: {e}") from None


def check(config: dict, schema_path: str | Path) -> dict:
    """Everything a job will need, checked at plan time -> the config with command-line values coerced."""
    config = validate_schema(config, schema_path)
    check_methods(config)
    check_synthetic_images(config)
    check_local_data(config)
    check_eval_tasks(config)
    check_batches(config)
    check_pdrop(config)
    return config
