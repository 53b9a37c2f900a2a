"""The paper's variants as settings of the one training loop, and the run matrix built from them.

A point of the grid is (variant, method, p, r). Settings a variant ignores are canonicalised
(baseline -> method 'none', p 0, r 0; no slow mode -> r 0) so that identical trainings share one
run directory, and pretraining runs are keyed only by what pretraining sees.
"""
from __future__ import annotations

from dataclasses import dataclass

# per variant: pretraining (prune, isolator) and SFT (prune, fast-slow, isolator, distill, p-MoD layers)
VARIANTS = {
    "baseline":        dict(pre_prune=False, pre_iso=False, sft_prune=False, fast_slow=False, iso=False, distill=False, pmod=False),
    "naiveprune":      dict(pre_prune=True,  pre_iso=False, sft_prune=True,  fast_slow=False, iso=False, distill=False, pmod=False),
    "fastslow":        dict(pre_prune=True,  pre_iso=False, sft_prune=True,  fast_slow=True,  iso=False, distill=False, pmod=False),
    "fastslow_iso":    dict(pre_prune=True,  pre_iso=True,  sft_prune=True,  fast_slow=True,  iso=True,  distill=False, pmod=False),
    "dualspeed":       dict(pre_prune=True,  pre_iso=True,  sft_prune=True,  fast_slow=True,  iso=True,  distill=True, pmod=False),
    "dualspeed_noiso": dict(pre_prune=True,  pre_iso=False, sft_prune=True,  fast_slow=True,  iso=False, distill=True, pmod=False),
    "vtp_pretrain":    dict(pre_prune=True,  pre_iso=False, sft_prune=False, fast_slow=False, iso=False, distill=False, pmod=False),
    "vtp_sft":         dict(pre_prune=False, pre_iso=False, sft_prune=True,  fast_slow=False, iso=False, distill=False, pmod=False),
    # the comparison row: the baseline's pretraining, then SFT with Mixture-of-Depths layers
    "pmod":            dict(pre_prune=False, pre_iso=False, sft_prune=False, fast_slow=False, iso=False, distill=False, pmod=True),
}
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
}
INFERENCE_MODES = ("normal", "pruned", "pruned_noiso")


@dataclass(frozen=True, order=True)
class Point:
    variant: str
    method: str
    p: float
    r: float

    @property
    def path(self) -> str:
        return f"{self.variant}/{self.method}/p{fmt(self.p)}/r{fmt(self.r)}"

    @property
    def settings(self) -> dict:
        return VARIANTS[self.variant]

    @property
    def pretrain_tag(self) -> str:
        s = self.settings
        if not s["pre_prune"]:
            return "full"
        return f"{self.method}_p{fmt(self.p)}_{'iso' if s['pre_iso'] else 'noiso'}"


def fmt(x: float) -> str:
    """0.9 -> '0.9', 0.0 -> '0': stable, readable path components."""
    return f"{float(x):g}"


def point(variant: str, method: str, p: float, r: float) -> Point:
    if variant not in VARIANTS:
        raise KeyError(f"unknown variant '{variant}'; known: {', '.join(VARIANTS)}")
    s = VARIANTS[variant]
    if not (s["pre_prune"] or s["sft_prune"]):
        return Point(variant, "none", 0.0, 0.0)
    return Point(variant, method, float(p), float(r) if s["fast_slow"] else 0.0)


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
        "main": main + [point("pmod", m, p, r)],
        "mismatch": main,
        "ablation": [point(v, m, p, r) for v in ("baseline", "naiveprune", "fastslow", "fastslow_iso", "dualspeed",
                                                   "dualspeed_noiso")],
        "per_stage": [point(v, m, p, r) for v in ("baseline", "vtp_pretrain", "vtp_sft", "naiveprune")],
        "methods": [point("baseline", m, p, r)] + [point("dualspeed", mm, p, r) for mm in grid["methods"]],
        "p_sweep": [point("baseline", m, p, r)] + [point("dualspeed", m, pp, r) for pp in grid["p_sweep"]],
        "r_sweep": [point("baseline", m, p, r)] + [point("dualspeed", m, p, rr) for rr in grid["r_sweep"]],
        # training-free VTP: the baseline under pruned inference with each method (vtp_inference_paths),
        # beside DualSpeed trained with the same method
        "vtp_inference": [point("baseline", m, p, r)] + [point("dualspeed", mm, p, r) for mm in grid["methods"]],
    }


def vtp_inference_paths(grid: dict) -> dict[str, str]:
    """method -> the metrics file of the baseline checkpoint under pruned inference with it at the grid's p,
    relative to results_dir."""
    return {mm: f"vtp_inference/{mm}/p{fmt(grid['p'])}.json" for mm in grid["methods"]}


def all_points(grid: dict) -> list[Point]:
    return sorted({pt for pts in table_points(grid).values() for pt in pts})
