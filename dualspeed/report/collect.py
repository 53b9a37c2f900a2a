"""Read the metrics and timings of grid points, and derive relative performance and speedups.

Relative performance (the paper's): mean over benchmarks of score / baseline score under normal
inference, in %. Speedup (the paper's): baseline wall time / variant wall time, per stage
(pretraining, SFT) and overall (their sum). Wall time is the training loop's runtime from
timing.json; the tiny recipe's warm-up stage is shared by every run and left out.
"""
from __future__ import annotations

import json
from pathlib import Path

from .. import recipe
from ..variants import Point, point


class MissingRun(FileNotFoundError):
    pass


def _read(path: Path, pt: Point, what: str) -> dict:
    if not path.is_file():
        raise MissingRun(f"run {pt.path} has no {what}: expected {path}. Build it with `snakemake {path}`.")
    return json.loads(path.read_text())


def metrics(cfg: dict, pt: Point, mode: str) -> dict:
    return _read(Path(cfg["results_dir"]) / "metrics" / pt.path / f"{mode}.json", pt, f"metrics for mode '{mode}'")


def vtp_metrics(cfg: dict, path: str) -> dict:
    """Metrics of the baseline under training-free pruned inference (variants.vtp_inference_paths)."""
    full = Path(cfg["results_dir"]) / path
    if not full.is_file():
        raise MissingRun(f"no training-free VTP evaluation at {full}. Build it with `snakemake {full}`.")
    return json.loads(full.read_text())


def timings(cfg: dict, pt: Point) -> dict:
    sft = _read(Path(recipe.sft_dir(cfg, pt)) / "timing.json", pt, "SFT timing")
    pre = _read(Path(recipe.pretrain_dir(cfg, pt.pretrain_tag)) / "timing.json", pt, "pretraining timing")
    flops = {k: t.get("flops") for k, t in (("pretrain", pre), ("sft", sft))}  # absent in runs older than the field
    peak = sft.get("peak_memory_bytes") or {}
    return {"pretrain_s": pre["train_runtime_s"], "sft_s": sft["train_runtime_s"],
            "total_s": pre["train_runtime_s"] + sft["train_runtime_s"],
            "pretrain_flops": flops["pretrain"], "sft_flops": flops["sft"],
            "total_flops": None if None in flops.values() else flops["pretrain"] + flops["sft"],
            "sft_peak_mem_mib": max(peak.values()) / 2**20 if peak else None}


def baseline(cfg: dict) -> Point:
    g = cfg["grid"]
    return point("baseline", g["method"], g["p"], g["r"])


class Scorer:
    """Relative performance and speedups against the config's baseline run."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        b = baseline(cfg)
        self.base_scores = metrics(cfg, b, "normal")["scores"]
        self.base_time = timings(cfg, b)
        # A ratio to a zero baseline score is undefined: such benchmarks are left out (and named).
        self.excluded = sorted(k for k, v in self.base_scores.items() if v <= 0)
        self.benchmarks = sorted(k for k, v in self.base_scores.items() if v > 0)
        if not self.benchmarks:
            raise ValueError(f"the baseline run {b.path} scores 0 on every benchmark: relative performance is undefined")

    def rel_perf(self, pt: Point, mode: str = "normal") -> float:
        return self.rel_perf_of(metrics(self.cfg, pt, mode)["scores"], f"{pt.path} ({mode})")

    def rel_perf_of(self, s: dict, what: str) -> float:
        missing = [k for k in self.benchmarks if k not in s]
        if missing:
            raise KeyError(f"run {what} has no score for {missing}")
        return 100.0 * sum(s[k] / self.base_scores[k] for k in self.benchmarks) / len(self.benchmarks)

    def speedups(self, pt: Point) -> dict:
        t, b = timings(self.cfg, pt), self.base_time
        # compute speedup: the baseline's counted FLOPs over the variant's, the limit a wall-time speedup
        # would reach if time followed FLOPs
        compute = {f"compute_speedup_{k}": (b[f"{k}_flops"] / t[f"{k}_flops"] if b[f"{k}_flops"] and t[f"{k}_flops"]
                                            else None) for k in ("pretrain", "sft", "total")}
        compute["compute_speedup_overall"] = compute.pop("compute_speedup_total")
        return {"speedup_pretrain": b["pretrain_s"] / t["pretrain_s"], "speedup_sft": b["sft_s"] / t["sft_s"],
                "speedup_overall": b["total_s"] / t["total_s"], **compute, **t}
