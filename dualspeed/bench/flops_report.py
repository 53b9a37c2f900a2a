"""The FLOPs model (dualspeed/models/flops.py) for a bench preset or a recipe's settings: per-variant step
FLOPs, compute-limit speedups, and inference prefill FLOPs and KV cache.

    python -m dualspeed.bench flops --preset 7b-sft
    python -m dualspeed.bench flops --config config/llava15_7b.yaml --json
    python -m dualspeed.bench flops --measure-pmod    # the tiny model's routed prefill, counted by torch
    python -m dualspeed.bench flops --measure-pdrop   # the tiny model's PyramidDrop prefill, counted by torch

A recipe's per-sample composition is an assumption, stated in the output: text tokens per sample (the
image placeholder excluded) and answer tokens; LLaVA-NeXT images are square at the largest square
resolution of the recipe's pinpoints (a base crop + the full grid, no unpadding).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from ..config import TinyModelConfig
from ..models import flops
from ..models.pmod import prd_ratios
from .presets import PRESETS, preset_case

# architectures of the models the real recipes name, so no download is needed to plan them
KNOWN = {
    "lmsys/vicuna-7b-v1.5": dict(d=4096, layers=32, heads=32, kv_heads=32, inter=11008, vocab=32000),
    "openai/clip-vit-large-patch14-336": dict(vis_d=1024, vis_layers=24, vis_inter=4096, patch=14, image=336),
}
# per stage: (text tokens, answer tokens) per sample, and samples in the stage's data
ASSUME = {"pretrain": (40, 15), "sft": (160, 60)}
DATA_SIZES = {"llava15": (558_128, 665_298), "llava_next": (558_128, 779_011)}


def recipe_shape(cfg: dict) -> flops.Shape:
    m = cfg["model"]
    if m.get("source") == "tiny":
        t = {**TinyModelConfig().__dict__, **m.get("tiny", {})}
        tok = Path(cfg["data"].get("root", "")) / "tokenizer" / "tokenizer.json"
        vocab = len(json.loads(tok.read_text())["model"]["vocab"]) if tok.is_file() else 61  # the synth tokenizer's
        return flops.Shape(vis_d=t["vision_hidden"], vis_layers=t["vision_layers"], vis_inter=4 * t["vision_hidden"],
                           patch=t["patch_size"], image=t["image_size"], d=t["llm_hidden"], layers=t["llm_layers"],
                           heads=t["llm_heads"], kv_heads=t["llm_heads"], inter=t["llm_intermediate"], vocab=vocab)
    names = (m.get("llm"), m.get("vision_tower"))
    missing = [n for n in names if n not in KNOWN]
    if missing:
        raise SystemExit(f"no architecture known for {missing}; add it to dualspeed.bench.flops_report.KNOWN "
                         f"(known: {', '.join(KNOWN)})")
    return flops.Shape(**KNOWN[names[1]], **KNOWN[names[0]])


def recipe_setup(train: dict) -> flops.Setup:
    lora = train.get("lora", {})
    return flops.Setup(llm=train.get("llm", "lora"), lora_r=lora.get("r", 128),
                       checkpointing=bool(train.get("gradient_checkpointing", False)),
                       train_vision=bool(train.get("train_vision_tower", False)))


def recipe_report(cfg: dict, text: dict | None = None) -> dict:
    """Compute-limit speedups per stage and overall for a pipeline config at its grid's p and r."""
    shape = recipe_shape(cfg)
    g = cfg["grid"]
    pins = cfg["model"].get("image_grid_pinpoints") or []
    if pins:
        side = max(min(h, w) for h, w in pins if h == w) // shape.image
        visual, crops = flops.anyres_visual(shape.patches, side, side)
    else:
        visual, crops = shape.patches, 1
    text = {**ASSUME, **(text or {})}
    kind = cfg["data"].get("kind", "synthetic")
    if kind in DATA_SIZES:
        sizes = dict(zip(("pretrain", "sft"), DATA_SIZES[kind]))
    else:
        s = cfg["data"].get("synth", {})
        sizes = {"pretrain": s.get("n_pretrain", 3000), "sft": s.get("n_sft", 6000) + s.get("n_text_only", 300)}
    iso = cfg.get("fastslow", {}).get("isolator_len", 4)
    pdrop = pdrop_settings(cfg, shape)
    out = {"assumptions": {"text_answer_tokens_per_sample": text, "visual_tokens_full": visual, "crops": crops,
                           "samples": sizes, "p": g["p"], "r": g["r"]}, "stages": {}}
    total = {}
    for stage in ("pretrain", "sft"):
        train = cfg[stage]["train"]
        sample = flops.Sample(text[stage][0], visual, crops, text[stage][1])
        res = flops.compute_speedups(shape, recipe_setup(train), [sample], g["p"], 0.0 if stage == "pretrain" else g["r"],
                                     iso, prd_ratios(shape.layers), pdrop)
        if stage == "pretrain":  # p-MoD shares the baseline's pretraining
            res["variant_flops"]["pmod"], res["compute_speedup"]["pmod"] = res["variant_flops"]["baseline"], 1.0
        own = (cfg.get("pmod") or {}).get("train")
        if stage == "sft" and own:  # the p-MoD row trains with its own SFT recipe
            f = flops.train_step(shape, recipe_setup({**train, **own}), [sample], "pmod", g["p"], iso,
                                 prd_ratios(shape.layers)).total
            res["variant_flops"]["pmod"] = f
            res["compute_speedup"]["pmod"] = res["variant_flops"]["baseline"] / f
            res["pmod_train"] = own
            # p-MoD's paper compares with a baseline trained as itself (77.7% of its GPU hours)
            same = flops.train_step(shape, recipe_setup({**train, **own}), [sample], "full", g["p"], iso).total
            res["pmod_vs_baseline_with_its_recipe"] = same / f
        mine = (cfg.get("pdrop") or {}).get("train")
        if stage == "sft" and mine:  # the PyramidDrop row trains with its own SFT recipe (it drops in pretraining too)
            f = flops.train_step(shape, recipe_setup({**train, **mine}), [sample], "pdrop", g["p"], iso,
                                 pdrop=pdrop).total
            res["variant_flops"]["pdrop"] = f
            res["compute_speedup"]["pdrop"] = res["variant_flops"]["baseline"] / f
            res["pdrop_train"] = mine
            # PyramidDrop's paper compares with a baseline trained as itself (104 -> 79 GPU hours)
            same = flops.train_step(shape, recipe_setup({**train, **mine}), [sample], "full", g["p"], iso).total
            res["pdrop_vs_baseline_with_its_recipe"] = same / f
        out["stages"][stage] = res
        for k, v in res["variant_flops"].items():
            total[k] = total.get(k, 0.0) + v * sizes[stage]
    out["total_flops"] = total
    out["compute_speedup_overall"] = {k: total["baseline"] / v for k, v in total.items()}
    out["inference"] = inference(shape, flops.Sample(text["sft"][0] - text["sft"][1], visual, crops), g["p"], iso, pdrop)
    out["pdrop"] = pdrop
    return out


def pdrop_settings(cfg: dict, shape: flops.Shape) -> dict:
    """A config's PyramidDrop boundaries and lam; the published split at the LLM's depth where it gives none."""
    pd = cfg.get("pdrop") or {}
    default = flops.default_pdrop(shape.layers)
    return {"layers": list(pd.get("layers", default["layers"])), "lam": float(pd.get("lam", default["lam"]))}


def preset_report(name: str, p: float) -> dict:
    """Compute-limit speedups of a preset's batch at p and its preset r, and one sample's inference."""
    shape, setup, batch, r = preset_case(name)
    res = flops.compute_speedups(shape, setup, batch, p, r)
    res["inference"] = inference(shape, flops.Sample(batch[0].text - batch[0].answer, batch[0].visual, batch[0].crops),
                                 p, 4)
    return res


def inference(shape: flops.Shape, sample: flops.Sample, p: float, iso: int, pdrop: dict | None = None) -> dict:
    """Prefill FLOPs and KV cache of one sample: normal, pruned (with the isolator), p-MoD and PyramidDrop; ratios
    to normal."""
    ratios = prd_ratios(shape.layers)
    pdrop = pdrop or flops.default_pdrop(shape.layers)
    res = {m: flops.prefill(shape, sample, m, p, iso if m == "pruned" else 0, ratios, pdrop=pdrop)
           for m in ("normal", "pruned", "pmod", "pdrop")}
    base = res["normal"]
    for r in res.values():
        r["vs_normal"] = {k: r[k] / base[k] for k in ("flops", "llm_flops", "kv_cache_bytes")}
        r.pop("kv_tokens")
    return res


def _f(x: float) -> str:
    return f"{x / 1e12:.3f} TFLOPs" if x >= 1e11 else f"{x / 1e9:.3f} GFLOPs"


def _fmt(res: dict) -> str:
    lines = []
    for stage, r in res.get("stages", {"step": res}).items():
        cs = r["compute_speedup"]
        per = "sample" if "stages" in res else "step"
        lines.append(f"{stage}: per {per} " + ", ".join(f"{m} {_f(v)}" for m, v in r["variant_flops"].items()))
        lines.append(f"{stage}: compute-limit speedup " + ", ".join(f"{m} {v:.2f}x" for m, v in cs.items()))
        if "pmod_vs_baseline_with_its_recipe" in r:
            lines.append(f"{stage}: p-MoD against a baseline trained with p-MoD's recipe "
                         f"{r['pmod_vs_baseline_with_its_recipe']:.2f}x")
        if "pdrop_vs_baseline_with_its_recipe" in r:
            lines.append(f"{stage}: PyramidDrop against a baseline trained with PyramidDrop's recipe "
                         f"{r['pdrop_vs_baseline_with_its_recipe']:.2f}x")
    if "compute_speedup_overall" in res:
        lines.append("overall: " + ", ".join(f"{m} {v:.2f}x" for m, v in res["compute_speedup_overall"].items()))
    for m, r in res["inference"].items():
        v = r["vs_normal"]
        lines.append(f"inference {m}: {_f(r['flops'])} ({100 * v['flops']:.1f}%, LLM "
                     f"{100 * v['llm_flops']:.1f}%), KV cache {r['kv_cache_bytes'] / 2**20:.1f} MiB "
                     f"({100 * v['kv_cache_bytes']:.1f}%)")
    return "\n".join(lines)


def add_arguments(ap) -> None:
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=sorted(PRESETS), help="a bench preset (dualspeed/bench/presets.py)")
    src.add_argument("--config", help="a pipeline config (config/*.yaml): its model, stages, p and r")
    src.add_argument("--measure-pmod", action="store_true", help="count the tiny model's routed prefill with torch")
    src.add_argument("--measure-pdrop", action="store_true", help="count the tiny model's PyramidDrop prefill with torch")
    ap.add_argument("--p", type=float, help="pruning ratio (default: the preset's 0.9 or the config's grid.p)")
    ap.add_argument("--text", nargs=2, type=int, metavar=("PRETRAIN", "SFT"),
                    help=f"text tokens per sample (--config; default {ASSUME['pretrain'][0]} and {ASSUME['sft'][0]})")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a summary")


def command(a) -> int:
    if a.measure_pmod:
        from .pmod_measure import measure_pmod  # builds the tiny model: torch and transformers

        print(json.dumps(measure_pmod(), indent=2))
        return 0
    if a.measure_pdrop:
        from .pdrop_measure import measure_pdrop  # builds the tiny model: torch and transformers

        print(json.dumps(measure_pdrop(), indent=2))
        return 0
    if a.preset:
        res = preset_report(a.preset, 0.9 if a.p is None else a.p)
    else:
        cfg = yaml.safe_load(Path(a.config).read_text())
        if a.p is not None:
            cfg["grid"]["p"] = a.p
        text = None
        if a.text:
            text = {"pretrain": (a.text[0], math.ceil(ASSUME["pretrain"][1] * a.text[0] / ASSUME["pretrain"][0])),
                    "sft": (a.text[1], math.ceil(ASSUME["sft"][1] * a.text[1] / ASSUME["sft"][0]))}
        res = recipe_report(cfg, text)
    print(json.dumps(res, indent=2) if a.json else _fmt(res))
    return 0
