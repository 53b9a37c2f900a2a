"""The paper's figures as PNG and PDF: speed-performance Pareto plot, training curves, speedup bars.

    python -m dualspeed.report.figures --config-json '<pipeline config>' --figure pareto --out paper_figures/pareto
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
import pandas as pd  # noqa: E402

from .. import cli
from ..grid import recipe  # noqa: E402
from ..grid.recipe import has_pretraining  # noqa: E402
from ..grid.variants import all_tables  # noqa: E402
from .collect import Scorer  # noqa: E402
from .tables import is_llava_next, paper_reference  # noqa: E402


def pareto_front(xy: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated in (higher speedup, higher performance), sorted by speedup."""
    front = [a for a in xy if not any(b[0] >= a[0] and b[1] >= a[1] and b != a for b in xy)]
    return sorted(set(front))


# label offsets (points) tried in order: right-above, right-below, left-above, left-below, above, below
_OFFSETS = ((5, 4, "left", "bottom"), (5, -4, "left", "top"), (-5, 4, "right", "bottom"),
            (-5, -4, "right", "top"), (0, 7, "center", "bottom"), (0, -7, "center", "top"))


def place_labels(ax, items: list[tuple[tuple[float, float], str]], marker_px: float = 7.0):
    """Annotate each point at the first offset whose text box hits no earlier label and no marker.

    The sweeps put several points within a few pixels of each other, where a fixed offset overprints."""
    ax.figure.canvas.draw()  # settles autoscaled limits, so data-to-pixel transforms are final
    renderer = ax.figure.canvas.get_renderer()
    markers = [ax.transData.transform(xy) for xy, _ in items]
    placed = []

    def clear(box, own: int) -> bool:
        if any(box.overlaps(b) for b in placed):
            return False
        return not any(j != own and box.x0 - marker_px < mx < box.x1 + marker_px
                       and box.y0 - marker_px < my < box.y1 + marker_px for j, (mx, my) in enumerate(markers))

    for n, (xy, text) in enumerate(items):
        for i, (dx, dy, ha, va) in enumerate(_OFFSETS):
            ann = ax.annotate(text, xy, textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, fontsize=7)
            box = ann.get_window_extent(renderer)
            if clear(box, n) or i == len(_OFFSETS) - 1:
                placed.append(box)
                break
            ann.remove()


def _xy(sc: Scorer, pt) -> dict:
    """Compute speedup (noise-free, the point's x), measured speedup, and relative performance with its interval."""
    sp, rel = sc.speed_stats(pt), sc.rel_stat(pt)
    compute = sp["compute_speedup_overall"]
    return {"x": compute.mean if compute else sp["speedup_overall"].mean, "measured": sp["speedup_overall"],
            "y": rel.mean, "yerr": rel.half or 0.0}


def _scatter(ax, pts: list[dict], marker: str, size: float, label: str, **kw):
    """Filled marker at the compute speedup with the 95% interval of performance; a hollow one of the same
    colour at the measured wall-clock speedup (its own interval as a horizontal bar), joined by a thin line."""
    xs, ys = [d["x"] for d in pts], [d["y"] for d in pts]
    h = ax.errorbar(xs, ys, yerr=[d["yerr"] for d in pts], fmt=marker, ms=size, capsize=2, label=label, **kw)
    colour = h[0].get_color()
    mx = [d["measured"].mean for d in pts]
    ax.errorbar(mx, ys, xerr=[d["measured"].half or 0.0 for d in pts], fmt=marker, ms=size * 0.8, mfc="none",
                color=colour, capsize=2, alpha=0.7)
    for d, m in zip(pts, mx):
        ax.plot([d["x"], m], [d["y"], d["y"]], color=colour, lw=0.6, alpha=0.5)


def pareto(cfg: dict, ax):
    sc = Scorer(cfg)
    tp = all_tables(cfg["grid"], has_pretraining(cfg))  # SFT-only: no per-stage rows
    series = {"p sweep (r fixed)": [p for p in tp["p_sweep"] if p.variant == "dualspeed"],
              "r sweep (p fixed)": [p for p in tp["r_sweep"] if p.variant == "dualspeed"]}
    allxy, labels = [], {}
    for (label, pts), marker in zip(series.items(), ("o", "s")):
        ds = [_xy(sc, pt) for pt in pts]
        allxy += [(d["x"], d["y"]) for d in ds]
        _scatter(ax, ds, marker, 7, f"DualSpeed, {label}")
        labels.update({pt: (d["x"], d["y"]) for d, pt in zip(ds, pts)})  # the default point is in both: one label
    other = {"pmod": "p-MoD", "pdrop": "PyramidDrop"}  # the comparison families, off the frontier
    for v, marker in (("baseline", "*"), ("naiveprune", "X"), ("pmod", "D"), ("pdrop", "^")):
        pt = next((p for p in tp["main"] if p.variant == v), None)
        if pt is None:
            continue
        d = _xy(sc, pt)
        if v not in other:  # the frontier is over this paper's own variants
            allxy.append((d["x"], d["y"]))
        _scatter(ax, [d], marker, 11 if v not in other else 8, other.get(v, v))
    front = pareto_front(allxy)
    ax.plot([x for x, _ in front], [y for _, y in front], "k--", lw=1, label="Pareto frontier (compute speedup)")
    ref = paper_reference()["pareto_point_llava_next" if is_llava_next(cfg) else "pareto_point"]
    ax.scatter(ref["speedup"], ref["rel_perf"], marker="P", s=140, c="red", label=ref["label"])
    ax.scatter([], [], marker="o", facecolors="none", edgecolors="grey", label="hollow: measured wall-clock speedup")
    ax.set_xlabel("training speedup over baseline (x): compute (training FLOPs), filled")
    ax.set_ylabel("relative performance, normal inference (%), 95% CI")
    ax.set_title("Speed-performance trade-off over p and r")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.figure.tight_layout()  # fix the axes' size first: label overlap is judged in display space
    place_labels(ax, [(xy, f"p={pt.p:g},r={pt.r:g}") for pt, xy in labels.items()])


def curves(cfg: dict, fig):
    tp = all_tables(cfg["grid"], has_pretraining(cfg))  # SFT-only: no per-stage rows
    pts = list(dict.fromkeys(tp["ablation"] + tp["per_stage"]))  # every variant, in table order
    axes = fig.subplots(1, 3)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, pt in enumerate(pts):
        path = Path(recipe.sft_dir(cfg, pt)) / "steps.csv"
        if not path.is_file():
            raise FileNotFoundError(f"run {pt.path} has no step log {path}")
        df = pd.read_csv(path)
        win = max(1, len(df) // 20)
        for ax, col in zip(axes, ("teacher_ce", "student_ce", "kl")):
            s = df[["step", col]].dropna()
            if len(s):
                ax.plot(s["step"], s[col].rolling(max(1, min(win, len(s))), min_periods=1).mean(), label=pt.variant,
                        color=colours[i % len(colours)])  # one colour per variant in every panel
    for ax, title in zip(axes, ("teacher CE (fast mode: pruned, + isolator where used)", "student CE (full sequence)",
                                "KL(teacher || student), slow steps")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("SFT step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss (rolling mean)")
    handles = [Line2D([], [], color=colours[i % len(colours)], label=pt.variant) for i, pt in enumerate(pts)]
    fig.legend(handles=handles, loc="upper center", ncol=len(pts), fontsize=8, bbox_to_anchor=(0.5, 1.0))


def speedup(cfg: dict, ax):
    sc = Scorer(cfg)
    tp = all_tables(cfg["grid"], has_pretraining(cfg))  # SFT-only: no per-stage rows
    stats = {p: sc.speed_stats(p) for p in set(tp["main"] + tp["ablation"] + tp["per_stage"])}
    pts = sorted(stats, key=lambda p: stats[p]["speedup_overall"].mean)
    width = 0.2
    xs = range(len(pts))
    bars = (("speedup_pretrain", "pretraining"), ("speedup_sft", "SFT"), ("speedup_overall", "overall"),
            ("compute_speedup_overall", "overall, compute (FLOPs)"))
    for i, (key, label) in enumerate(bars):
        vals = [stats[p][key] for p in pts]
        ax.bar([x + (i - 1.5) * width for x in xs], [v.mean if v else 0.0 for v in vals], width,
               yerr=[(v.half or 0.0) if v else 0.0 for v in vals], capsize=2, label=label)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(list(xs), [p.variant for p in pts], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("speedup over baseline (x), 95% CI over seeds")
    ax.set_title("Training speedup per stage")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def render(cfg: dict, name: str, out: Path):
    out.parent.mkdir(parents=True, exist_ok=True)
    if name == "curves":
        fig = plt.figure(figsize=(14, 4.6))
        curves(cfg, fig)
        fig.tight_layout(rect=(0, 0, 1, 0.92))
    else:
        fig, ax = plt.subplots(figsize=(7.5, 5.2))
        {"pareto": pareto, "speedup": speedup}[name](cfg, ax)
        fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(out.with_suffix(f".{ext}"), dpi=150)
    plt.close(fig)


def main(argv=None):
    ap = cli.ArgumentParser(description=__doc__)
    ap.add_argument("--config-json", required=True)
    ap.add_argument("--figure", required=True, choices=["pareto", "curves", "speedup"])
    ap.add_argument("--out", required=True, help="output prefix; .png and .pdf are written")
    a = ap.parse_args(argv)
    render(json.loads(a.config_json), a.figure, Path(a.out))


if __name__ == "__main__":
    main()
