"""The paper's qualitative findings, each tested on the grid with a 95% interval and given a verdict.

A finding is a claim about the difference d = A - B of two relative performances:
  "A > B" (or "A < B"): reproduced when d's interval excludes 0 on the claimed side, not reproduced when it
      excludes 0 on the other side, inconclusive otherwise;
  "A ≈ B": reproduced when d's interval lies inside ±MARGIN, not reproduced when it lies wholly outside,
      inconclusive otherwise (the interval is too wide to tell).
MARGIN is 2 points of relative performance: the paper's "no cost" differences are under 0.5 points on
benchmarks of thousands of questions, and one question of a 200-question synthetic task moves a task
score by 0.5 points. Nothing here is tuned toward the paper's numbers: the claims are its words.
"""
from __future__ import annotations

import pandas as pd

from ..grid.recipe import has_pretraining
from ..grid.variants import all_tables, point, trained_for
from .collect import Scorer, sft_only_note
from .stats import Diff, diff, stat

MARGIN = 2.0


def _paired(sc: Scorer, row, mode_a: str, mode_b: str) -> Diff:
    """One row under two inference modes: the per-seed differences of the same checkpoints."""
    a, b = sc.rel_stat(row, mode_a), sc.rel_stat(row, mode_b)
    d = stat([x - y for x, y in zip(a.values, b.values)])
    return Diff(d.mean, d.lo, d.hi, "paired" if d.half is not None else "none")


def verdict(d: Diff, claim: str) -> str:
    if d.lo is None:
        return "inconclusive (one seed, no spread known)"
    if claim == ">":
        return "reproduced" if d.lo > 0 else "not reproduced" if d.hi < 0 else "inconclusive"
    if claim == "<":
        return "reproduced" if d.hi < 0 else "not reproduced" if d.lo > 0 else "inconclusive"
    if -MARGIN <= d.lo and d.hi <= MARGIN:
        return "reproduced"
    return "not reproduced" if (d.lo > MARGIN or d.hi < -MARGIN) else "inconclusive"


def _findings(g: dict):
    """(finding, paper's numbers, claim, A, B): A and B are (row, mode)."""
    m, p, r = g["method"], g["p"], g["r"]
    v = lambda name, **kw: point(name, m, kw.get("p", p), kw.get("r", r))  # noqa: E731
    out = [
        ("NaivePrune does worse under normal than under pruned inference (training-inference mismatch)",
         "95.89 normal vs 97.85 pruned", ">", (v("naiveprune"), "pruned"), (v("naiveprune"), "normal")),
        ("Fast-slow training recovers most of NaivePrune's loss under normal inference",
         "95.89 -> 98.88", ">", (v("fastslow"), "normal"), (v("naiveprune"), "normal")),
        ("The mode isolator adds a little", "98.88 -> 99.32 (+0.44)", ">",
         (v("fastslow_iso"), "normal"), (v("fastslow"), "normal")),
        ("Self-distillation adds a little", "99.32 -> 99.61 (+0.29)", ">",
         (v("dualspeed"), "normal"), (v("fastslow_iso"), "normal")),
        ("DualSpeed performs as the baseline", "99.61 vs 100", "≈", (v("dualspeed"), "normal"), (v("baseline"), "normal")),
        ("VTP in pretraining only costs nothing", "100.12 vs 100", "≈",
         (v("vtp_pretrain"), "normal"), (v("baseline"), "normal")),
        ("VTP in SFT only costs as much as VTP in both stages", "95.83 vs 95.89", "≈",
         (v("vtp_sft"), "normal"), (v("naiveprune"), "normal")),
        # evaluated as the PyramidDrop paper evaluates it: with its own dropping inference
        ("PyramidDrop training keeps the baseline's performance",
         "PyramidDrop paper: no benchmark lower by more than 0.1 point (101.91 vs 100), at 104 -> 79 GPU hours "
         "(1.32x faster)", "≈", (v("pdrop"), "pdrop"), (v("baseline"), "normal")),
    ]
    ps, rs = sorted(g["p_sweep"]), sorted(g["r_sweep"])
    if p in ps and min(ps) < p:
        out.append((f"Performance is flat in p up to {p:g} (p={p:g} vs p={min(ps):g})", "flat up to 0.9", "≈",
                    (v("dualspeed", p=p), "normal"), (v("dualspeed", p=min(ps)), "normal")))
    if p in ps and max(ps) > p:
        out.append((f"... then drops (p={max(ps):g} vs p={p:g})", "drops > 3 points from 0.9 to 0.95", "<",
                    (v("dualspeed", p=max(ps)), "normal"), (v("dualspeed", p=p), "normal")))
    if r in rs and max(rs) > r:
        out.append((f"r={r:g} is the knee: more slow steps add nothing (r={max(rs):g} vs r={r:g})",
                    "knee near r = 0.1", "≈", (v("dualspeed", r=max(rs)), "normal"), (v("dualspeed", r=r), "normal")))
    if r in rs and min(rs) < r:
        out.append((f"... and fewer lose (r={min(rs):g} vs r={r:g})", "knee near r = 0.1", "<",
                    (v("dualspeed", r=min(rs)), "normal"), (v("dualspeed", r=r), "normal")))
    return out


def findings_table(cfg: dict) -> tuple[pd.DataFrame, str]:
    g = cfg["grid"]
    sc = Scorer(cfg)
    ran = set(all_tables(g, has_pretraining(cfg))["findings"])
    # a one-seed row's spread: pooled over the seeded evaluations of its kind (Scorer.pooled)
    pools = {kind: sc.pooled(sorted(ran), as_trained=kind) for kind in (True, False)}
    rows = []
    for text, paper, claim, (ra, ma), (rb, mb) in _findings(g):
        if not {ra, rb} <= ran:  # an SFT-only grid: a claim about pretraining settings
            rows.append({"finding": text, "paper": paper, "claim": f"A {claim} B", "A": f"{ra.variant} {ma}",
                         "B": f"{rb.variant} {mb}", "A - B [95% CI]": None, "interval": None,
                         "verdict": "not run (no pretraining stage)"})
            continue
        a, b = sc.rel_stat(ra, ma), sc.rel_stat(rb, mb)
        one = (ra, ma) if a.n < 2 else (rb, mb)
        d = _paired(sc, ra, ma, mb) if ra == rb else diff(a, b, pools[trained_for(*one)])
        rows.append({"finding": text, "paper": paper, "claim": f"A {claim} B",
                     "A": f"{ra.variant} {ma}: {a.fmt()} (n={a.n})", "B": f"{rb.variant} {mb}: {b.fmt()} (n={b.n})",
                     "A - B [95% CI]": d.fmt(), "interval": d.how, "verdict": verdict(d, claim)})
    caption = ("The paper's findings on this grid. Relative performance in % of the baseline (mean of its seeds); "
               "A and B are means over seeds ± 95% t-interval. The interval of A - B is the paired t-interval "
               "for one row under two inference modes, Welch's for two rows with >= 2 seeds each, and for a "
               "one-seed row the seed-to-seed spread pooled over the seeded rows' evaluations of its kind: "
               f"evaluated as the row trained ({pools[True].fmt()}), or under an inference its SFT never saw "
               f"({pools[False].fmt()}; NaivePrune under normal inference). Verdicts: "
               f"'A > B' is reproduced when the interval lies above 0; 'A ≈ B' when it lies within ±{MARGIN:g} points; "
               "not reproduced when it lies wholly on the other side; inconclusive otherwise.")
    margin = sc.question_margin()
    if margin is not None:
        caption += (f" The questions alone ({sc.questions:.0f} a task) give the baseline's relative performance a "
                    f"binomial 95% interval of ±{margin:.1f} points in one evaluation.")
    if not has_pretraining(cfg):
        caption += " " + sft_only_note(cfg)
    return pd.DataFrame(rows), caption

