"""The paper's variants as settings of the one training loop, and the run matrix built from them.

A point of the grid is (variant, method, p, r, seed). Settings a variant ignores are canonicalised
(baseline -> method 'none', p 0, r 0; no slow mode -> r 0) so that identical trainings share one
run directory, and pretraining runs are keyed only by what pretraining sees - and by the seed: a seed
never shares a pretraining run with another. A table's row is a point at seed 0 (`row`); the seeds it
is trained with come from `grid.seeds` and `grid.extra_seeds` (`point_seeds`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..modes import PDROP_MODE

# per variant: pretraining (prune, isolator) and SFT (prune, fast-slow, isolator, distill, p-MoD layers); PyramidDrop
# drops inside the LLM in both stages
VARIANTS = {
    "baseline":        dict(pre_prune=False, pre_iso=False, sft_prune=False, fast_slow=False, iso=False, distill=False, pmod=False, pdrop=False),
    "naiveprune":      dict(pre_prune=True,  pre_iso=False, sft_prune=True,  fast_slow=False, iso=False, distill=False, pmod=False, pdrop=False),
    "fastslow":        dict(pre_prune=True,  pre_iso=False, sft_prune=True,  fast_slow=True,  iso=False, distill=False, pmod=False, pdrop=False),
    "fastslow_iso":    dict(pre_prune=True,  pre_iso=True,  sft_prune=True,  fast_slow=True,  iso=True,  distill=False, pmod=False, pdrop=False),
    "dualspeed":       dict(pre_prune=True,  pre_iso=True,  sft_prune=True,  fast_slow=True,  iso=True,  distill=True, pmod=False, pdrop=False),
    "dualspeed_noiso": dict(pre_prune=True,  pre_iso=False, sft_prune=True,  fast_slow=True,  iso=False, distill=True, pmod=False, pdrop=False),
    "vtp_pretrain":    dict(pre_prune=True,  pre_iso=False, sft_prune=False, fast_slow=False, iso=False, distill=False, pmod=False, pdrop=False),
    "vtp_sft":         dict(pre_prune=False, pre_iso=False, sft_prune=True,  fast_slow=False, iso=False, distill=False, pmod=False, pdrop=False),
    # the comparison row: the baseline's pretraining, then SFT with Mixture-of-Depths layers
    "pmod":            dict(pre_prune=False, pre_iso=False, sft_prune=False, fast_slow=False, iso=False, distill=False, pmod=True, pdrop=False),
    # the third family: PyramidDrop's staged dropping inside the LLM in pretraining and SFT, no VTP
    "pdrop":           dict(pre_prune=False, pre_iso=False, sft_prune=False, fast_slow=False, iso=False, distill=False, pmod=False, pdrop=True),
}
# both act on the LLM's layers: one run never has both (the run config refuses it too, naming the keys)
assert not [v for v, s in VARIANTS.items() if s["pmod"] and s["pdrop"]]
DESCRIPTIONS = {
    "baseline": "no pruning in either stage",
    "naiveprune": "VTP in both stages, always fast mode, no isolator (NaivePrune)",
    "fastslow": "NaivePrune + fast-slow modes (no isolator, no distillation)",
    "fastslow_iso": "+ mode isolator (DualSpeed without distillation)",
    "dualspeed": "fast-slow + isolator + self-distillation (DualSpeed)",
    "dualspeed_noiso": "DualSpeed with the isolator removed",
    "vtp_pretrain": "VTP only in pretraining",
    "vtp_sft": "VTP only in SFT (always fast, no isolator)",
    "pmod": "p-MoD: Mixture-of-Depths over vision tokens in SFT (TanhNorm, STRing, PRD), no VTP",
    "pdrop": "PyramidDrop: visual tokens dropped in stages inside the LLM, ranked by attention, in both stages; no VTP",
}


@dataclass(frozen=True, order=True)
class Point:
    variant: str
    method: str
    p: float
    r: float
    seed: int = 0

    @property
    def path(self) -> str:
        return f"{self.variant}/{self.method}/p{fmt(self.p)}/r{fmt(self.r)}/s{self.seed}"

    @property
    def row(self) -> "Point":
        """The same point at seed 0: what a table row names."""
        return replace(self, seed=0)

    def with_seed(self, seed: int) -> "Point":
        return replace(self, seed=int(seed))

    @property
    def settings(self) -> dict:
        return VARIANTS[self.variant]

    @property
    def pretrain_tag(self) -> str:
        s = self.settings
        if s["pdrop"]:  # PyramidDrop drops in pretraining too: a pretraining run of its own
            return f"pdrop_s{self.seed}"
        if not s["pre_prune"]:
            return f"full_s{self.seed}"
        return f"{self.method}_p{fmt(self.p)}_{'iso' if s['pre_iso'] else 'noiso'}_s{self.seed}"


def fmt(x: float) -> str:
    """0.9 -> '0.9', 0.0 -> '0': stable, readable path components."""
    return f"{float(x):g}"


def point(variant: str, method: str, p: float, r: float, seed: int = 0) -> Point:
    if variant not in VARIANTS:
        raise KeyError(f"unknown variant '{variant}'; known: {', '.join(VARIANTS)}")
    s = VARIANTS[variant]
    if not (s["pre_prune"] or s["sft_prune"]):
        return Point(variant, "none", 0.0, 0.0, int(seed))
    return Point(variant, method, float(p), float(r) if s["fast_slow"] else 0.0, int(seed))


def stage_fastslow(pt: Point, stage: str, isolator_len: int, tau: float, lam: float) -> dict:
    """The `fastslow` block of the run config for one stage of one point."""
    s = pt.settings
    if stage == "pretrain":
        prune, iso = s["pre_prune"], s["pre_iso"]
        return dict(prune=prune, method=pt.method if prune else "divprune", ratio=pt.p, slow_prob=0.0,
                    isolator=iso, isolator_len=isolator_len, distill=False, tau=tau, lam=lam)
    prune = s["sft_prune"]
    return dict(prune=prune, method=pt.method if prune else "divprune", ratio=pt.p,
                slow_prob=pt.r if s["fast_slow"] else 0.0, isolator=s["iso"], isolator_len=isolator_len,
                distill=s["distill"], tau=tau, lam=lam)


# The tables of the paper and the points each needs (given the grid settings of a config).
def table_points(grid: dict) -> dict[str, list[Point]]:
    m, p, r = grid["method"], grid["p"], grid["r"]
    main = [point(v, m, p, r) for v in ("baseline", "naiveprune", "dualspeed")]
    return {
        "main": main + [point("pmod", m, p, r), point("pdrop", m, p, r)],
        "mismatch": main,
        "ablation": [point(v, m, p, r) for v in ("baseline", "naiveprune", "fastslow", "fastslow_iso", "dualspeed",
                                                   "dualspeed_noiso")],
        "per_stage": [point(v, m, p, r) for v in ("baseline", "vtp_pretrain", "vtp_sft", "naiveprune")],
        "methods": [point("baseline", m, p, r)] + [point("dualspeed", mm, p, r) for mm in grid["methods"]],
        "p_sweep": [point("baseline", m, p, r)] + [point("dualspeed", m, pp, r) for pp in grid["p_sweep"]],
        "r_sweep": [point("baseline", m, p, r)] + [point("dualspeed", m, p, rr) for rr in grid["r_sweep"]],
        # training-free VTP: the baseline under pruned inference with each method (vtp_inference_paths),
        # beside DualSpeed trained with the same method
        # ... and PyramidDrop used training-free on the baseline beside PyramidDrop trained (pdrop_inference_paths)
        "vtp_inference": [point("baseline", m, p, r)] + [point("dualspeed", mm, p, r) for mm in grid["methods"]]
        + [point("pdrop", m, p, r)],
    }


# Tables that the findings table reads; it lists their rows. `main` is among them for its seeded p-MoD row,
# whose seed-to-seed spread goes into the pooled spread of one-seed comparisons.
FINDINGS_TABLES = ("main", "mismatch", "ablation", "per_stage", "p_sweep", "r_sweep")


# Tables that compare pretraining settings: without a pretraining stage (an SFT-only grid) they are written as not
# run, with no rows trained for them.
PRETRAINING_TABLES = ("per_stage",)


def all_tables(grid: dict, pretraining: bool = True) -> dict[str, list[Point]]:
    """Every table the pipeline renders and its rows: the paper's tables and the findings table."""
    tables = table_points(grid)
    if not pretraining:
        tables.update({name: [] for name in PRETRAINING_TABLES})
    tables["findings"] = sorted({pt for name in FINDINGS_TABLES for pt in tables[name]})
    return tables


def seeds(grid: dict) -> list[int]:
    return [int(s) for s in grid.get("seeds", [0])]


def point_seeds(grid: dict) -> dict[Point, list[int]]:
    """row -> the seeds it is trained with: every seed for a row of a table in `grid.seeded_tables` or of a variant
    in `grid.seeded_variants`, the first seed otherwise; a variant in `grid.extra_seeded_variants` gets every seed
    and `grid.extra_seeds` too, in every table (a row whose seed-to-seed spread is itself the effect a finding
    measures needs more seeds than the rest). A row shared by several tables is reported with every seed it has."""
    all_seeds, seeded = seeds(grid), set(grid.get("seeded_tables", []))
    variants = set(grid.get("seeded_variants", []))
    extra, more = [int(s) for s in grid.get("extra_seeds", [])], set(grid.get("extra_seeded_variants", []))
    for key, names in (("seeded_variants", variants), ("extra_seeded_variants", more)):
        unknown = names - set(VARIANTS)
        if unknown:
            raise ValueError(f"grid.{key} names unknown variant(s) {sorted(unknown)}; variants: {', '.join(VARIANTS)}")
    out: dict[Point, set[int]] = {}
    for name, pts in table_points(grid).items():
        for pt in pts:
            every = name in seeded or pt.variant in variants or pt.variant in more
            out.setdefault(pt, set()).update(all_seeds if every else all_seeds[:1])
            if pt.variant in more:
                out[pt].update(extra)
    return {pt: sorted(s) for pt, s in out.items()}


def every_seed(grid: dict) -> list[int]:
    """Every seed any row of the grid is trained with."""
    return sorted({s for ss in point_seeds(grid).values() for s in ss} | set(seeds(grid)))


def baseline_row(grid: dict) -> Point:
    return point("baseline", grid["method"], grid["p"], grid["r"])


def metrics_relpath(pt: Point, mode: str) -> str:
    """The metrics file of one run under one inference mode, relative to results_dir."""
    return f"metrics/{pt.path}/{mode}.json"


def vtp_inference_paths(grid: dict) -> dict[str, str]:
    """method -> the metrics file of the baseline checkpoint (first seed) under pruned inference with it at the
    grid's p, relative to results_dir. The grid's own method is the baseline's pruned evaluation."""
    base = baseline_row(grid).with_seed(seeds(grid)[0])
    return {mm: (metrics_relpath(base, "pruned") if mm == grid["method"] else f"vtp_inference/{mm}/p{fmt(grid['p'])}.json")
            for mm in grid["methods"]}


def trained_for(pt: Point, mode: str) -> bool:
    """Whether the row's SFT trained on the sequences an inference mode feeds it: normal inference for a row whose
    SFT saw every visual token (always, or in its slow steps), pruned inference for one whose SFT pruned (with the
    isolator where it trained one), PyramidDrop's for PyramidDrop. A row evaluated otherwise meets inputs it never
    trained on, and its score then moves with the seed far more (NaivePrune under normal inference: docs/seeds.md)."""
    s = pt.settings
    if mode == PDROP_MODE:
        return s["pdrop"]
    if mode == "normal":
        return not s["pdrop"] and (s["fast_slow"] or not s["sft_prune"])
    return s["sft_prune"] and (mode == "pruned" or not s["iso"])


def own_modes(pt: Point) -> list[str]:
    """Inference modes a row is evaluated in beyond eval.modes: a PyramidDrop row, its own dropping inference."""
    return [PDROP_MODE] if pt.settings["pdrop"] else []


def pdrop_inference_path(grid: dict) -> str:
    """The metrics file of the baseline checkpoint (first seed) under PyramidDrop's inference used training-free,
    relative to results_dir."""
    return metrics_relpath(baseline_row(grid).with_seed(seeds(grid)[0]), PDROP_MODE)


def all_points(grid: dict) -> list[Point]:
    """Every training of the grid, each seed its own."""
    return sorted(pt.with_seed(s) for pt, ss in point_seeds(grid).items() for s in ss)
