"""Read the metrics and timings of grid points, and derive relative performance and speedups.

Relative performance (the paper's): mean over benchmarks of score / baseline score under normal
inference, in %. Speedup (the paper's): baseline wall time / variant wall time, per stage
(pretraining, SFT) and overall (their sum). Wall time is the training loop's runtime from
timing.json; the tiny recipe's stand-ins (its CLIP and Vicuna) are shared by every run and left out.

Seeds: the baseline's reference (its scores, times and FLOPs) is its mean over its seeds; each seed
of a row is scored against that reference, and the row reports the mean and 95% interval over its
seeds (`stats.stat`).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..grid import recipe
from ..grid.variants import (PRETRAINING_TABLES, VARIANTS, Point, baseline_row, metrics_relpath, own_modes, point_seeds,
                             seeds, trained_for)
from .stats import Pooled, Stat, stat


class MissingRun(FileNotFoundError):
    pass


def _read(path: Path, pt: Point, what: str) -> dict:
    if not path.is_file():
        raise MissingRun(f"run {pt.path} has no {what}: expected {path}. Build it with `snakemake {path}`.")
    return json.loads(path.read_text())


def metrics(cfg: dict, pt: Point, mode: str) -> dict:
    return _read(Path(cfg["results_dir"]) / metrics_relpath(pt, mode), pt, f"metrics for mode '{mode}'")


def vtp_metrics(cfg: dict, path: str) -> dict:
    """Metrics of the baseline under training-free pruned inference (variants.vtp_inference_paths)."""
    full = Path(cfg["results_dir"]) / path
    if not full.is_file():
        raise MissingRun(f"no training-free VTP evaluation at {full}. Build it with `snakemake {full}`.")
    return json.loads(full.read_text())


def timings(cfg: dict, pt: Point) -> dict:
    sft = _read(Path(recipe.sft_dir(cfg, pt)) / "timing.json", pt, "SFT timing")
    # an SFT-only grid ran no pretraining: it adds nothing to the time or FLOPs, and has no speedup of its own
    pre = _read(Path(recipe.pretrain_dir(cfg, pt.pretrain_tag)) / "timing.json", pt, "pretraining timing") \
        if recipe.has_pretraining(cfg) else {"train_runtime_s": 0.0, "flops": 0}
    flops = {k: t.get("flops") for k, t in (("pretrain", pre), ("sft", sft))}  # absent in runs older than the field
    peak = sft.get("peak_memory_bytes") or {}
    return {"pretrain_s": pre["train_runtime_s"], "sft_s": sft["train_runtime_s"],
            "total_s": pre["train_runtime_s"] + sft["train_runtime_s"],
            "pretrain_flops": flops["pretrain"], "sft_flops": flops["sft"],
            "total_flops": None if None in flops.values() else flops["pretrain"] + flops["sft"],
            "sft_peak_mem_mib": max(peak.values()) / 2**20 if peak else None}


def sft_only_note(cfg: dict) -> str:
    pre = sorted(v for v, s in VARIANTS.items() if s["pre_prune"] and s["sft_prune"])  # vtp_pretrain: not run
    return (f"SFT-only grid: no pretraining data, so no pretraining stage ran; every row's SFT starts from "
            f"{cfg['model'].get('path')} (its projector trained without VTP). Rows whose recipe also prunes in "
            f"pretraining ({', '.join(pre)}) ran their SFT part only; tables comparing pretraining settings "
            f"({', '.join(PRETRAINING_TABLES)}) are not run.")


def baseline(cfg: dict) -> Point:
    return baseline_row(cfg["grid"])


def chance_bound(chance: float, n: float) -> float:
    """The score (in %) a guesser at `chance` % stays under with 95% probability over n questions (normal
    approximation, one-sided); with no question count, chance itself."""
    c = chance / 100.0
    return chance + (100.0 * 1.645 * (c * (1 - c) / n) ** 0.5 if n > 0 else 0.0)


def _mean_dicts(ds: list[dict]) -> dict:
    return {k: (None if any(d[k] is None for d in ds) else sum(d[k] for d in ds) / len(ds)) for k in ds[0]}


class Scorer:
    """Relative performance and speedups against the config's baseline (the mean of its seeds)."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.seeds = point_seeds(cfg["grid"])
        b = baseline(cfg)
        runs = [b.with_seed(s) for s in self.seeds_of(b)]
        base = [metrics(cfg, r, "normal") for r in runs]
        self.base_scores = _mean_dicts([m["scores"] for m in base])
        self.base_time = _mean_dicts([timings(cfg, r) for r in runs])
        # A ratio to a zero baseline score is undefined: such benchmarks are left out (and named).
        self.excluded = sorted(k for k, v in self.base_scores.items() if v <= 0)
        # So is a ratio to a baseline that answers at chance (eval.chance): every run would score ~100% of
        # it, whatever it learned. Left out unless the baseline is shown to be above chance both by its
        # questions (the binomial 95% margin over each task's share of `samples`, all seeds) and by its seeds
        # (the lower end of the 95% t-interval of its per-seed scores, with two or more seeds).
        per_task = sum(m.get("samples", 0) for m in base) / max(1, len(self.base_scores))
        per_seed = {k: stat([m["scores"][k] for m in base]) for k in self.base_scores}
        self.at_chance = {k: (self.base_scores[k], c) for k, c in (cfg["eval"].get("chance") or {}).items()
                          if k in self.base_scores and self.base_scores[k] > 0
                          and (self.base_scores[k] <= chance_bound(c, per_task)
                               or (per_seed[k].lo is not None and per_seed[k].lo <= c))}
        self.benchmarks = sorted(k for k, v in self.base_scores.items() if v > 0 and k not in self.at_chance)
        self.questions = base[0].get("samples", 0) / max(1, len(self.base_scores))  # a task's, one evaluation
        if not self.benchmarks:
            raise ValueError(f"the baseline run {b.path} scores 0 or chance on every benchmark: relative performance "
                             "is undefined")

    def question_margin(self) -> float | None:
        """Half-width in points of the binomial 95% interval of the baseline's relative performance over the
        questions of one evaluation: what the question count alone leaves unresolved, before any seed."""
        if not self.questions:
            return None
        b = [self.base_scores[k] / 100 for k in self.benchmarks]
        return 100 * 1.96 * sum((1 - x) / (self.questions * x) for x in b) ** 0.5 / len(b)

    def seeds_of(self, row: Point) -> list[int]:
        """The seeds of a row; a row outside the config's tables (a user's own point) has the first seed."""
        return self.seeds.get(row.row, seeds(self.cfg["grid"])[:1])

    def runs(self, row: Point) -> list[Point]:
        return [row.row.with_seed(s) for s in self.seeds_of(row)]

    def rel_stat(self, row: Point, mode: str = "normal") -> Stat:
        return stat([self.rel_perf(pt, mode) for pt in self.runs(row)])

    def speed_stats(self, row: Point) -> dict[str, Stat | None]:
        per = [self.speedups(pt) for pt in self.runs(row)]
        return {k: (None if any(d[k] is None for d in per) else stat([d[k] for d in per])) for k in per[0]}

    def pooled(self, rows, as_trained: bool | None = None) -> Pooled:
        """Seed-to-seed spread of relative performance pooled over the given rows that have >= 2 seeds. With
        `as_trained`, over every seeded evaluation of those rows of that kind: evaluated as its row trained (True)
        or not (False; `trained_for`); under an inference its SFT never saw, NaivePrune's spread is nine times the
        others' and would set every one-seed interval. Without a seeded evaluation of that kind, and without
        `as_trained`, over the rows' normal inference."""
        seeded = [r for r in rows if len(self.seeds_of(r)) >= 2]
        if as_trained is not None:
            same = [self.rel_stat(r, m).values for r in seeded for m in self.pool_modes(r)
                    if trained_for(r, m) == as_trained]
            if same:
                return Pooled.of(same, "as trained" if as_trained else "not as trained")
        return Pooled.of([self.rel_stat(r, "normal").values for r in seeded],
                         "" if as_trained is None else "none of its kind seeded: every seeded row's normal inference")

    def pool_modes(self, row: Point) -> list[str]:
        """The inference modes a row is evaluated in, each a distinct evaluation (pruned without the isolator is
        pruned again for a row that trained none)."""
        modes = [m for m in self.cfg["eval"]["modes"] if m != "pruned_noiso" or row.settings["iso"]]
        return modes + own_modes(row)

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
        return {"speedup_pretrain": b["pretrain_s"] / t["pretrain_s"] if t["pretrain_s"] else None,
                "speedup_sft": b["sft_s"] / t["sft_s"],
                "speedup_overall": b["total_s"] / t["total_s"], **compute, **t}
