import json
import os
import re
import shlex
import sys
from types import SimpleNamespace

import yaml

from snakemake.utils import validate
from snakemake_interface_executor_plugins.settings import DeploymentMethod

from dualspeed import launch
from dualspeed.grid import folders, plan_check, recipe
from dualspeed.grid.variants import (VARIANTS, all_points, all_tables, baseline_row, fmt,
                                     every_seed, metrics_relpath, point, point_seeds, seeds, vtp_inference_paths)
from dualspeed.grid.variants import own_modes, pdrop_inference_path
from dualspeed.modes import INFERENCE_MODES

# command-line values coerced to the schema's types; key path, value and what is allowed on the
# first line of any error; VTP methods and evaluation tasks checked before a job is planned
config.update(plan_check.check(config, workflow.source_path("../schemas/config.schema.yaml")))
validate(config, schema="../schemas/config.schema.yaml")  # fills the schema's defaults
# a grid on other data never writes into the data, runs, tables or figures of the default or another committed grid
config_, note = folders.own_folders(config, folders.committed_grids(os.path.join(workflow.basedir, "config")))
if note:
    config.update(config_)
    print(note, file=sys.stderr)

# The interpreter of every job is the one running this workflow (the venv's), never whatever `python`, `torchrun`
# or `srun ... python` finds on PATH (a job given the system Python failed at its first import). Under
# --software-deployment-method conda each job runs in its conda environment, whose own python is on its PATH.
# Jobs get it as params.py (a parameter, so Snakemake's provenance records it).
PY = "python" if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method else shlex.quote(sys.executable)

GRID = config["grid"]
if config["model"]["source"] == "tiny" and set(config.get("standins", {})) != set(recipe.STANDINS):
    raise ValueError("config key 'standins' must give the training of each stand-in (clip, llm) when model.source is "
                     "tiny: the tiny recipe pretrains its own CLIP and LLM before LLaVA's two stages")

RECIPE = config["recipe"]
HAS_PRETRAINING = recipe.has_pretraining(config)
if not HAS_PRETRAINING:
    print("SFT-only grid (data.pretrain_json absent, model.source llava): every row's SFT starts from "
          f"{config['model']['path']}; no pretraining stage runs. Rows whose recipe prunes in pretraining run their "
          "SFT part only (every table's caption says so); the per-stage table and the findings that compare "
          "pretraining settings are written as not run.", file=sys.stderr)
RUNS = config["runs_dir"]
RES = config["results_dir"]
FIGS = config["figures_dir"]
TABLES = all_tables(GRID, HAS_PRETRAINING)
SEEDS = point_seeds(GRID)  # row -> its seeds
SEEDS_ALL = every_seed(GRID)
POINTS = all_points(GRID)  # every training, each seed its own
PRETRAIN = {pt.pretrain_tag: pt for pt in sorted(POINTS, reverse=True)}
MODES = config["eval"]["modes"]
THREADS = config.get("threads", {"train": 1, "eval": 1})


def _alt(values):
    return "|".join(re.escape(v) for v in sorted(set(values)))


wildcard_constraints:
    variant=_alt(VARIANTS),
    method=_alt([pt.method for pt in POINTS]),
    p=_alt([fmt(pt.p) for pt in POINTS]),
    r=_alt([fmt(pt.r) for pt in POINTS]),
    mode=_alt(INFERENCE_MODES),
    ptag=_alt(PRETRAIN),
    seed=_alt([str(pt.seed) for pt in POINTS]),
    table=_alt(TABLES),


# Every point the wildcards can name, by its path: a job takes its p and r as the config's numbers, never as
# numbers read back from a path.
P_OF = {fmt(p): float(p) for p in {0.0, GRID["p"], *GRID["p_sweep"]}}
R_OF = {fmt(r): float(r) for r in {0.0, GRID["r"], *GRID["r_sweep"]}}
POINT_OF = {pt.path: pt for pt in (point(v, m, p, r, s) for v in VARIANTS for m in {pt.method for pt in POINTS}
                                   for p in P_OF.values() for r in R_OF.values() for s in SEEDS_ALL)}


def wc_point(wc):
    """The grid point named by the wildcards; non-canonical spellings are refused with the right one."""
    asked = f"{wc.variant}/{wc.method}/p{wc.p}/r{wc.r}/s{wc.seed}"
    if asked in POINT_OF:
        return POINT_OF[asked]
    pt = point(wc.variant, wc.method, P_OF.get(wc.p, 0.0), R_OF.get(wc.r, 0.0), int(wc.seed))
    raise ValueError(f"'{asked}' is not a canonical grid point; the same training is '{pt.path}'")


def res(kind, name):
    """Resources of a job from config; runtime grows with the retry attempt; a job asks for at least as many CPUs
    as it runs threads (the rule's `threads`). A training job on N > 1 nodes asks the Slurm executor for N nodes
    with one task each and `gpus` GPUs per node (docs/slurm.md: why gres and not gpu, why mpi, why
    tasks_per_gpu 0); `mem_mb` and `cpus` are per node."""
    r = config["resources"][kind]
    nodes = r.get("nodes", 1)
    out = {"mem_mb": r["mem_mb"], "cpus_per_task": lambda wc, threads, base=r["cpus"]: max(base, threads),
           "runtime": lambda wc, attempt, base=r["runtime"]: base * attempt}
    if nodes > 1:
        # mpi: the job step runs the rule's command as is, which starts its own `srun` over the nodes (launcher);
        # tasks: --ntasks=N with --nodes=N, one per node; tasks_per_gpu 0 keeps `tasks` from also becoming
        # --ntasks-per-gpu; gres: GPUs per node (the gpu resource becomes --gpus, a count for the whole job)
        out.update(nodes=nodes, tasks=nodes, mpi="srun", tasks_per_gpu=0)
        if r["gpus"]:
            out["gres"] = ":".join(["gpu", *([r["gpu_model"]] if r.get("gpu_model") else []), str(r["gpus"])])
    elif r["gpus"]:
        out["gpu"] = r["gpus"]
        if r.get("gpu_model"):
            out["gpu_model"] = r["gpu_model"]
    if r.get("partition"):
        out["slurm_partition"] = r["partition"]
    return out


def launcher(kind):
    """How a job starts its processes (dualspeed/launch.py): plain python, torchrun on one node, or one srun task
    per node, each a torchrun agent meeting at the first node."""
    r = config["resources"][kind]
    return launch.command(r.get("nodes", 1), r["gpus"], r["cpus"], python=PY)


def metrics_path(pt, mode):
    return f"{RES}/{metrics_relpath(pt, mode)}"


def timing_path(pt):
    return f"{recipe.sft_dir(config, pt)}/timing.json"


def pretrain_timing(pt):
    return f"{recipe.pretrain_dir(config, pt.pretrain_tag)}/timing.json"


def table_inputs(name):
    pts = [row.with_seed(s) for row in TABLES[name] for s in SEEDS[row]]
    out = {"metrics": sorted({metrics_path(pt, m) for pt in pts for m in MODES}),
           "timing": [timing_path(pt) for pt in pts] + [pretrain_timing(pt) for pt in pts if HAS_PRETRAINING]}
    if name == "vtp_inference":
        out["metrics"] = sorted(set(out["metrics"]) | {f"{RES}/{path}" for path in vtp_inference_paths(GRID).values()})
    # a PyramidDrop row's own dropping inference; the baseline's training-free use of it (the methods table)
    own = {metrics_path(pt, m) for pt in pts for m in own_modes(pt)}
    own |= {f"{RES}/{pdrop_inference_path(GRID)}"} if name == "vtp_inference" else set()
    out["metrics"] = sorted(set(out["metrics"]) | own)
    return out


TABLE_FORMATS = ["md", "csv", "tex"]
FIGURES = ["pareto", "curves", "speedup"]


def all_targets():
    out = [f"{RES}/tables/{t}.{ext}" for t in TABLES for ext in TABLE_FORMATS]
    out += [f"{FIGS}/{f}.{ext}" for f in FIGURES for ext in ("png", "pdf")]
    return out


# -- data ---------------------------------------------------------------------------------------
DOWNLOADS = yaml.safe_load(open(workflow.source_path("../../config/downloads.yaml")))


def data_inputs(kind):
    if config["data"]["kind"] not in DOWNLOADS["sets"]:  # local: the user's files, already on disk
        return []
    names = DOWNLOADS["sets"][config["data"]["kind"]][kind]
    return [f"resources/downloads/{n}.ok" for n in names]


def bench_inputs():
    return [f"resources/benchmarks/{b}.ok" for b in config["eval"]["tasks"] if b in DOWNLOADS["benchmarks"]]


def prepare_local_args():
    """data.kind local: the arguments of `python -m dualspeed.data local` (data/local.py)."""
    d, q = config["data"], shlex.quote
    paths = recipe.data_paths(config)
    args = [f"--sft-json {q(d['sft_json'])} --image-folder {q(d['image_folder'])}",
            f"--bad-images {d.get('bad_images', 'fail')}"]
    if d.get("pretrain_json"):
        args.append(f"--pretrain-json {q(d['pretrain_json'])} --pretrain-image-folder {q(paths['pretrain_image_folder'])}")
    for name, task in config["eval"]["local_tasks"].items():
        spec = f"{name}={task['json']}::{task['image_folder']}"
        args.append(f"--task {q(spec)}")
    if config["model"]["source"] == "tiny":
        args.append("--tiny")
    return " ".join(args)


# -- training -----------------------------------------------------------------------------------
def data_ready():
    if config["data"]["kind"] == "synthetic":
        return [f"{config['data']['root']}/synth_meta.json"]
    if config["data"]["kind"] == "local":  # checked, task files written (tiny: tokenizer and stand-in data)
        return [recipe.data_paths(config)["meta"]]
    return []


def pretrain_inputs(wc):
    ins = list(data_ready())
    if config["model"]["source"] == "tiny":
        ins += [f"{recipe.standin_dir(config, kind)}/timing.json" for kind in recipe.STANDINS]
    if config["data"]["kind"] != "synthetic":
        ins += data_inputs("pretrain")
    return ins


def sft_inputs(wc):
    pt = wc_point(wc)
    ins = list(data_ready()) + ([pretrain_timing(pt)] if HAS_PRETRAINING else [])
    if config["data"]["kind"] != "synthetic":
        ins += data_inputs("sft")
    return ins


# -- evaluation ---------------------------------------------------------------------------------
def eval_inputs(wc):
    ins = {"timing": f"{RUNS}/sft/{wc.variant}/{wc.method}/p{wc.p}/r{wc.r}/s{wc.seed}/timing.json"}
    if config["data"]["kind"] == "synthetic":
        ins["data"] = f"{config['data']['root']}/synth_meta.json"
    else:
        ins["benchmarks"] = bench_inputs()
        ins["data"] = data_ready()  # local: the task files
    return ins


BASELINE = baseline_row(GRID).with_seed(seeds(GRID)[0])  # training-free VTP reads the first seed's checkpoint


def vtp_eval_inputs(wc):
    """evaluate_vtp reads the baseline's checkpoint: its inputs are the baseline's evaluation inputs."""
    return eval_inputs(SimpleNamespace(variant="baseline", method="none", p="0", r="0", seed=str(BASELINE.seed)))


def eval_command():
    """The evaluation CLI with its per-config arguments (everything but checkpoint, mode and output)."""
    return recipe.eval_command(config, PY)


def eval_params(wc):
    pt = wc_point(wc)
    method, p = recipe.eval_prune(config, pt)
    return {"ckpt": f"{recipe.sft_dir(config, pt)}/hf", "method": method, "p": p,
            "point": json.dumps({"variant": pt.variant, "method": pt.method, "p": pt.p, "r": pt.r, "seed": pt.seed})}


# -- report -------------------------------------------------------------------------------------
REPORT_CFG = json.dumps({k: config[k] for k in ("grid", "runs_dir", "results_dir", "eval", "fastslow", "model", "data")})


def figure_inputs(wc):
    names = {"pareto": ["p_sweep", "r_sweep", "main", "methods"], "curves": ["ablation", "per_stage"],
             "speedup": ["main", "ablation", "per_stage"]}[wc.figure]
    ins = []
    for n in names + ["main"]:
        t = table_inputs(n)
        ins += t["metrics"] + t["timing"]
    return sorted(set(ins))
