"""From the pipeline config (config/*.yaml) to the run config of one training stage of one grid point.

The Snakefile calls these so the same composition is testable without Snakemake.
"""
from __future__ import annotations

import copy
import os
from dataclasses import asdict
from pathlib import Path

from ..config import TinyModelConfig
from .variants import Point, stage_fastslow


def local_root(cfg: dict) -> str:
    """Where the pipeline writes what it derives from a user's own data (data.kind local): never beside the data."""
    return cfg["data"].get("root") or f"resources/{cfg['recipe']}"


def has_pretraining(cfg: dict) -> bool:
    """False for an SFT-only grid: own data without pretraining data, from a checkpoint whose projector is trained
    (model.source llava). Its SFT starts from model.path; no pretraining stage runs."""
    d = cfg.get("data", {})
    return not (d.get("kind") == "local" and not d.get("pretrain_json"))


def data_paths(cfg: dict) -> dict:
    d = cfg["data"]
    if d["kind"] == "synthetic":
        root = Path(d["root"])
        return {"clip": str(root / "clip.json"), "corpus": str(root / "corpus.json"),
                "pretrain": str(root / "pretrain.json"), "sft": str(root / "sft.json"), "image_folder": str(root),
                "clip_image_folder": str(root), "tokenizer": str(root / "tokenizer"),
                "clip_tokenizer": str(root / "clip_tokenizer")}
    out = {"pretrain": d.get("pretrain_json", ""), "sft": d["sft_json"], "image_folder": d["image_folder"],
           "pretrain_image_folder": d.get("pretrain_image_folder", d["image_folder"])}
    if d["kind"] == "local":  # the tiny recipe's derived files (data/local.py), under the recipe's own root
        root = Path(local_root(cfg))
        out.update(clip=str(root / "clip.json"), corpus=str(root / "corpus.json"), tokenizer=str(root / "tokenizer"),
                   clip_tokenizer=str(root / "clip_tokenizer"), clip_image_folder=out["pretrain_image_folder"],
                   tasks=str(root / "lmms_tasks"), meta=str(root / "local_meta.json"))
    return out


def tiny_geometry(cfg: dict) -> tuple[int, int]:
    """(image_size, patch_size) of the tiny model: model.tiny over the run config's defaults."""
    tiny = {**asdict(TinyModelConfig()), **cfg["model"].get("tiny", {})}
    return tiny["image_size"], tiny["patch_size"]


def crop_tokens(cfg: dict) -> int | None:
    """Visual tokens per crop where the config alone gives them (the tiny model); None where a loaded tower does."""
    if cfg["model"]["source"] != "tiny":
        return None
    size, patch = tiny_geometry(cfg)
    return (size // patch) ** 2


def synth_settings(cfg: dict) -> dict:
    """The synthetic generator's settings: data.synth, with the image geometry of the model that reads the images,
    written nowhere else - patches of model.tiny.patch_size px on one crop of model.tiny.image_size px or, for
    LLaVA-NeXT (model.image_grid_pinpoints), on the largest square resolution: a base crop plus the full grid."""
    size, patch = tiny_geometry(cfg)
    pins = cfg["model"].get("image_grid_pinpoints") or []
    if pins:
        squares = [h for h, w in pins if h == w]
        if not squares:
            raise ValueError(f"config key 'model.image_grid_pinpoints' is {pins}: the synthetic images are square and "
                             "take the largest square resolution; add one, e.g. [[32, 32]]")
        size = max(squares)
    return {**cfg["data"].get("synth", {}), "image_size": size, "patch_size": patch}


STANDINS = ("clip", "llm")  # the tiny recipe's stand-ins for CLIP and Vicuna


def standin_dir(cfg, kind: str) -> str:
    return f"{cfg['runs_dir']}/standins/{kind}"


def pretrain_dir(cfg, tag: str) -> str:
    return f"{cfg['runs_dir']}/pretrain/{tag}"


def sft_dir(cfg, pt: Point) -> str:
    return f"{cfg['runs_dir']}/sft/{pt.path}"


def _fs_defaults(cfg):
    fs = cfg["fastslow"]
    return fs["isolator_len"], fs["tau"], fs["lam"]


def _fs_extra(cfg) -> dict:
    """Fast-slow keys every point of a recipe shares; absent ones keep the run config's (the reference's)."""
    return {k: cfg["fastslow"][k] for k in ("tau_squared", "isolator_init") if k in cfg["fastslow"]}


def preprocessing(cfg: dict, stage: str) -> dict:
    """Image and text preprocessing of one stage. image_aspect_ratio defaults to anyres for a LLaVA-NeXT
    model and pad otherwise; pretraining may differ (`data.pretrain_image_aspect_ratio`: LLaVA-1.5 pretrains
    on center crops and fine-tunes on padded squares). Absent keys keep the run config's defaults."""
    d = cfg["data"]
    aspect = d.get("image_aspect_ratio", "anyres" if cfg["model"].get("image_grid_pinpoints") else "pad")
    if stage == "pretrain":
        aspect = d.get("pretrain_image_aspect_ratio", aspect)
    return {"image_aspect_ratio": aspect, **{k: d[k] for k in ("plain_end", "image_first", "truncate") if k in d}}


def _reads_relevance(method: str) -> bool:
    from .. import vtp

    return method != "none" and "relevance" in vtp.get(method).required_signals()


def _grid_reads_relevance(cfg: dict) -> bool:
    g = cfg["grid"]
    return any(_reads_relevance(n) for n in set(g.get("methods", [])) | {g["method"]})


def clip_source(cfg: dict) -> str:
    """The CLIP text tower a stage that reads relevance is given: the config's own, or for auto, the CLIP whose
    vision tower the model composes (the tiny stand-in's repo; model.vision_tower), which a stage reads directly.
    A llava-source recipe has no tower repo: auto there is the checkpoint's exported clip_text/."""
    value = str(cfg["model"].get("clip_text", "auto")).strip()
    if value.lower() != "auto":
        return value
    source = cfg["model"]["source"]
    if source == "tiny":
        return f"{standin_dir(cfg, 'clip')}/hf"
    return cfg["model"]["vision_tower"] if source == "compose" else "auto"


def clip_text(cfg: dict, pt: Point, stage: str) -> str:
    """One stage's CLIP text tower setting: the CLIP (clip_source) where that stage reads instruction relevance,
    or its export will be evaluated under pruning by a method that does; none elsewhere - a 7B export would
    otherwise carry ~250 MB of text tower nothing reads, and a run's spec would change with the grid's other
    methods (adding CDPruner to the grid would retrain every row). A llava-source grid passes the CLIP down
    exports (auto), so there every run carries it when any grid method reads relevance."""
    g = cfg.get("grid")
    if not g:
        return cfg["model"].get("clip_text", "auto")
    if clip_source(cfg) == "auto":
        return "auto" if _grid_reads_relevance(cfg) else "none"
    reads = pt.settings["pre_prune" if stage == "pretrain" else "sft_prune"] and _reads_relevance(pt.method)
    if stage == "sft":
        reads = reads or _reads_relevance(eval_prune(cfg, pt)[0])
    return clip_source(cfg) if reads else "none"


def vtp_eval_clip(cfg: dict, method: str) -> str:
    """The CLIP for a training-free pruned evaluation of the baseline's checkpoint with `method`, whose export
    carries none (its own runs read no relevance): the stage's CLIP where the method reads relevance."""
    return clip_source(cfg) if _reads_relevance(method) else "none"


def standin_spec(cfg: dict, kind: str) -> dict:
    """One stand-in's pretraining, alone: the CLIP on the image-caption pairs, the LLM on the text corpus. The
    CLIP is trained on the crops the model reads (model.tiny.image_size): for LLaVA-NeXT, the base view."""
    if kind not in STANDINS:
        raise ValueError(f"unknown stand-in {kind!r}; stand-ins: {', '.join(STANDINS)}")
    paths = data_paths(cfg)
    return {"kind": kind, "output_dir": standin_dir(cfg, kind), "image_folder": paths["clip_image_folder"],
            "data": paths["clip" if kind == "clip" else "corpus"],
            "tokenizer": paths["clip_tokenizer" if kind == "clip" else "tokenizer"],
            "tiny": copy.deepcopy(cfg["model"].get("tiny", {})), "train": copy.deepcopy(cfg["standins"][kind]["train"])}


def pretrain_spec(cfg: dict, pt: Point) -> dict:
    paths, m = data_paths(cfg), cfg["model"]
    if m["source"] in ("tiny", "compose"):
        # LLaVA's start: the LLM and the CLIP, which have never seen each other, and a fresh projector between them
        tiny = m["source"] == "tiny"
        model = {"source": "compose", "llm": f"{standin_dir(cfg, 'llm')}/hf" if tiny else m["llm"],
                 "vision_tower": f"{standin_dir(cfg, 'clip')}/hf" if tiny else m["vision_tower"],
                 "vision_feature_layer": m.get("vision_feature_layer", -2),
                 "image_grid_pinpoints": copy.deepcopy(m.get("image_grid_pinpoints", []))}
    else:
        model = {"source": "llava", "path": m["path"], "reinit_projector": bool(m.get("reinit_projector", False))}
    model["clip_text"] = clip_text(cfg, pt, "pretrain")
    return {
        "output_dir": pretrain_dir(cfg, pt.pretrain_tag),
        "model": model,
        "data": {"json": paths["pretrain"], "image_folder": paths.get("pretrain_image_folder", paths["image_folder"]),
                 "template": "plain", "max_length": cfg["data"].get("max_length", 2048),
                 "bad_images": cfg["data"].get("bad_images", "fail"), **preprocessing(cfg, "pretrain")},
        # the grid's seed is the run's: projector init, isolator init, data order
        "train": {**copy.deepcopy(cfg["pretrain"]["train"]), "stage": "pretrain", "seed": pt.seed},
        "fastslow": {**stage_fastslow(pt, "pretrain", *_fs_defaults(cfg)), **_fs_extra(cfg)},
        "pdrop": pdrop_block(cfg, pt),
    }


def sft_spec(cfg: dict, pt: Point) -> dict:
    paths = data_paths(cfg)
    pmod = copy.deepcopy(cfg.get("pmod", {}))
    train = {**copy.deepcopy(cfg["sft"]["train"]), "stage": "sft", "seed": pt.seed}
    own = pmod.pop("train", {})  # p-MoD's own SFT recipe (full fine-tune, LR 2e-5) where it differs
    if pt.settings["pmod"]:
        train.update(copy.deepcopy(own))
    if pt.settings["pdrop"]:  # PyramidDrop's own SFT recipe (the 7B recipes: full fine-tune, LR 2e-5)
        train.update(copy.deepcopy(cfg.get("pdrop", {}).get("train", {})))
    return {
        "output_dir": sft_dir(cfg, pt),
        # an SFT-only grid starts every row from the published checkpoint, its projector trained without VTP
        "model": {"source": "llava", "path": f"{pretrain_dir(cfg, pt.pretrain_tag)}/hf" if has_pretraining(cfg)
                  else cfg["model"]["path"], "clip_text": clip_text(cfg, pt, "sft")},
        "data": {"json": paths["sft"], "image_folder": paths["image_folder"], "template": "vicuna_v1",
                 "max_length": cfg["data"].get("max_length", 2048), "bad_images": cfg["data"].get("bad_images", "fail"),
                 **preprocessing(cfg, "sft")},
        "train": train,
        "fastslow": {**stage_fastslow(pt, "sft", *_fs_defaults(cfg)), **_fs_extra(cfg)},
        "pmod": {**pmod, "enabled": pt.settings["pmod"]},
        "pdrop": pdrop_block(cfg, pt),
    }


def pdrop_block(cfg: dict, pt: Point) -> dict:
    """The `pdrop` block of a run config: the config's PyramidDrop settings (its own SFT recipe left out), enabled
    in both stages of a PyramidDrop row."""
    pd = {k: copy.deepcopy(v) for k, v in cfg.get("pdrop", {}).items() if k != "train"}
    return {**pd, "enabled": pt.settings["pdrop"]}


def pdrop_eval_args(cfg: dict) -> str:
    """The evaluation CLI's PyramidDrop settings for a checkpoint trained without it (the baseline's training-free
    use); a PyramidDrop checkpoint runs with the settings it was trained with."""
    pd = {"layers": [8, 16, 24], "lam": 0.5, **cfg.get("pdrop", {})}
    return f"--pdrop-layers {','.join(str(x) for x in pd['layers'])} --pdrop-lam {pd['lam']}"


def eval_prune(cfg: dict, pt: Point) -> tuple[str, float]:
    """VTP method and p for pruned inference: the run's own, or the grid default for unpruned runs."""
    if pt.method == "none":
        return cfg["grid"]["method"], float(cfg["grid"]["p"])
    return pt.method, pt.p


def eval_command(cfg: dict, py: str) -> str:
    """The evaluation CLI with its per-config arguments (everything but checkpoint, mode and output), run by `py`:
    what the pipeline's evaluation jobs and grid.budget run."""
    e = cfg["eval"]
    device = "cuda" if cfg["resources"]["eval"]["gpus"] else "cpu"
    dtype = "bfloat16" if device == "cuda" else "float32"
    common = (f"--tasks {','.join(e['tasks'])} --batch-size {e['batch_size']} --limit {e.get('limit', 0)} "
              f"--device {device} --dtype {dtype}")
    if e["backend"] == "synthetic":
        return f"{py} -m dualspeed.evaluation --data {cfg['data']['root']} {common}"
    tasks = {"synthetic": f"{cfg['data']['root']}/lmms_tasks", "local": data_paths(cfg).get("tasks")}
    folders = [p for p in (tasks.get(cfg["data"]["kind"]), e.get("include_path")) if p]
    where = f"--include-path {os.pathsep.join(folders)}" if folders else ""
    if cfg["data"]["kind"] != "synthetic":
        where += " --hf-home resources/hf_home"
    return f"{py} -m dualspeed.evaluation.lmms {where} {common}"
