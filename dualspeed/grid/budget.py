"""Has the grid's baseline converged? Its SFT retrained at other budgets, per seed, from the grid's own pretraining.

    python -m dualspeed.grid.budget                      # 0.5x and 2x the SFT epochs, the grid's seeds
    python -m dualspeed.grid.budget --factors 2 --seeds 0 1 2 [--configfile FILE ...]
    python -m dualspeed.grid.budget --variant vtp_sft --factors 2 --seeds 0   # another row: regime or defect?

Run after the grid (it reads each seed's pretraining and the grid's own SFT, the 1x point, with its metrics). Each
budget is a whole run with its own cosine schedule, as the grid's SFT is, with everything else the grid's; the
runs go to <runs_dir>/budget/x<factor>/s<seed> and the metrics beside the grid's, in <results_dir>/budget/. The table
and the learning curve (accuracy per task against SFT steps) go to <results_dir>/tables/budget.{csv,md,png}; the
check the docs quote: the 2x budget's relative performance against the grid's, as a mean over the seeds.
Another variant (--variant, at the grid's method, p and r) goes to <runs_dir>/budget/<variant>/... and
budget_<variant>.*, its relative performance against the grid's baseline as the findings take it: a finding that is
not reproduced asks whether the row is still learning (a regime of the budget) or has stopped (a defect).
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import cli
from . import recipe
from .__main__ import pipeline_config
from .plan_error import PlanError
from .variants import all_points, metrics_relpath, point


def variant_points(cfg: dict, seeds: list[int] | None, variant: str = "baseline") -> dict:
    """One point a seed: where a sweep gives the variant several, the one at the grid's method, p and r."""
    g = cfg["grid"]
    trained = all_points(g)
    if variant not in {pt.variant for pt in trained}:
        raise PlanError(f"the grid trains no '{variant}'; its variants: {sorted({pt.variant for pt in trained})}")
    row = point(variant, g["method"], g["p"], g["r"])  # canonical: the baseline's method is 'none', and so on
    pts = {pt.seed: pt for pt in trained if pt.row == row}
    if not pts:
        raise PlanError(f"the grid trains '{variant}' only away from its own method, p and r ({row.path})")
    seeds = sorted(pts) if seeds is None else seeds
    missing = [s for s in seeds if s not in pts]
    if missing:
        raise PlanError(f"the grid has no {variant} of seed {missing}; its seeds: {sorted(pts)}")
    return {s: pts[s] for s in seeds}


def where(variant: str) -> str:
    """The baseline's budget runs keep the names the docs link; another variant's go beside them."""
    return "" if variant == "baseline" else f"{variant}/"


def train(spec: dict, log: Path) -> None:
    if (Path(spec["output_dir"]) / "timing.json").is_file():
        return  # finished earlier (the trainer would refuse to redo it unasked too)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-m", "dualspeed.train", "--spec", json.dumps(spec)], stdout=f,
                       stderr=subprocess.STDOUT, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def evaluate(cfg: dict, ckpt: Path, seed: int, out: Path, log: Path) -> dict:
    """Normal inference with the grid's own evaluation command (its backend, tasks, device and task folders)."""
    if not out.is_file():
        cmd = shlex.split(recipe.eval_command(cfg, shlex.quote(sys.executable)))
        cmd += ["--ckpt", str(ckpt), "--mode", "normal", "--seed", str(seed), "--out", str(out)]
        with open(log, "a") as f:
            subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.read_text())["scores"]


def one(cfg: dict, pt, factor: float) -> dict:
    """Train (unless 1x, the grid's own run) and evaluate one point at `factor` times the SFT epochs."""
    runs, results = Path(cfg["runs_dir"]), Path(cfg["results_dir"])
    if factor == 1:
        run = Path(recipe.sft_dir(cfg, pt))
        scores = json.loads((results / metrics_relpath(pt, "normal")).read_text())["scores"]
    else:
        spec = recipe.sft_spec(cfg, pt)
        spec["train"]["epochs"] = spec["train"].get("epochs", 1) * factor
        sub = f"{where(pt.variant)}x{factor:g}"
        run = runs / "budget" / sub / f"s{pt.seed}"
        spec["output_dir"] = str(run)
        log = Path("logs") / "budget" / f"{sub}_s{pt.seed}.log"
        train(spec, log)
        scores = evaluate(cfg, run / "hf", pt.seed, results / "budget" / sub / f"s{pt.seed}.json", log)
    timing = json.loads((run / "timing.json").read_text())
    return {"factor": factor, "seed": pt.seed, "steps": timing["steps"], "samples": timing["samples"],
            "train_s": timing["train_runtime_s"], **scores}


def summarise(rows: list[dict], tasks: list[str], ref: dict | None = None) -> tuple[list[str], dict]:
    """Markdown lines, and the relative performance of each budget: the mean over tasks of accuracy / ref, by default
    the 1x rows' mean (the baseline against its own grid run)."""
    factors = sorted({r["factor"] for r in rows})
    if ref is None:
        ref = {t: sum(r[t] for r in rows if r["factor"] == 1) / sum(r["factor"] == 1 for r in rows) for t in tasks}
    rel = {}
    lines = ["| SFT budget | steps | " + " | ".join(tasks) + " | relative performance (per seed) | mean |",
             "|---|---|" + "---|" * (len(tasks) + 2)]
    for f in factors:
        rs = sorted((r for r in rows if r["factor"] == f), key=lambda r: r["seed"])
        per_seed = [100 * sum(r[t] / ref[t] for t in tasks) / len(tasks) for r in rs]
        rel[f] = sum(per_seed) / len(per_seed)
        acc = [f"{sum(r[t] for r in rs) / len(rs):.1f}" for t in tasks]
        lines.append(f"| {f:g}x | {rs[0]['steps']} | " + " | ".join(acc) + " | "
                     + " / ".join(f"{v:.1f}" for v in per_seed) + f" | {rel[f]:.1f} |")
    return lines, rel


def baseline_ref(cfg: dict, tasks: list[str]) -> dict:
    """The grid's baseline under normal inference, per task, the mean over its seeds, as report.collect.Scorer takes
    it; unlike Scorer it keeps a task the baseline answers at chance (grid/ sits below report/ and cannot call it)."""
    res = Path(cfg["results_dir"])
    scores = [json.loads((res / metrics_relpath(pt, "normal")).read_text())["scores"]
              for pt in variant_points(cfg, None).values()]
    return {t: sum(s[t] for s in scores) / len(scores) for t in tasks}


def plot(rows: list[dict], tasks: list[str], path: Path, variant: str = "baseline") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, t in enumerate(tasks):
        for j, s in enumerate(sorted({r["seed"] for r in rows})):
            rs = sorted((r for r in rows if r["seed"] == s), key=lambda r: r["steps"])
            ax.plot([r["steps"] for r in rs], [r[t] for r in rs], marker="o", alpha=0.7, color=f"C{i}",
                    label=t.replace("synth_", "") if j == 0 else None)  # one legend entry a task
    ax.set_xlabel("SFT optimizer steps (each budget a whole run)")
    ax.set_ylabel("accuracy, normal inference (%)")
    ax.set_title(f"the {variant} against its SFT budget, one line per seed")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = cli.ArgumentParser(prog="python -m dualspeed.grid.budget", description=__doc__)
    ap.add_argument("--factors", type=float, nargs="+", default=[0.5, 2.0], help="SFT epochs as multiples of the grid's")
    ap.add_argument("--seeds", type=int, nargs="+", help="default: every seed the grid trains the variant with")
    ap.add_argument("--variant", default="baseline", help="the grid's row to retrain (default: baseline)")
    ap.add_argument("--jobs", type=int, default=2, help="trainings at a time, one thread each")
    ap.add_argument("--configfile", nargs="+", action="extend", default=[], metavar="FILE")
    a = ap.parse_args(argv)
    try:
        cfg = pipeline_config(a.configfile)
        pts = variant_points(cfg, a.seeds, a.variant)
        # another row is read against the grid's baseline, so that must have run too
        need = list(pts.values()) + ([] if a.variant == "baseline" else list(variant_points(cfg, None).values()))
        for pt in need:
            if not (Path(recipe.sft_dir(cfg, pt)) / "timing.json").is_file():
                raise PlanError(f"the grid's {pt.variant} of seed {pt.seed} has not run: run the grid first "
                                f"(bash scripts/run.sh {Path(cfg['results_dir']) / 'tables' / 'main.md'})")
    except PlanError as e:
        print(f"python -m dualspeed.grid.budget: {e}", file=sys.stderr)
        return 2
    work = [(pt, f) for f in sorted(set(a.factors) | {1.0}) for pt in pts.values()]
    with ThreadPoolExecutor(a.jobs) as pool:
        rows = list(pool.map(lambda w: one(cfg, *w), work))
    tasks = cfg["eval"]["tasks"]
    base = a.variant == "baseline"
    lines, rel = summarise(rows, tasks, None if base else baseline_ref(cfg, tasks))
    tables = Path(cfg["results_dir"]) / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    name = "budget" if base else f"budget_{a.variant}"
    import pandas as pd

    pd.DataFrame(rows).to_csv(tables / f"{name}.csv", index=False)
    (tables / f"{name}.md").write_text("\n".join(lines) + "\n")
    plot(rows, tasks, tables / f"{name}.png", a.variant)
    print("\n".join(lines))
    for f, v in rel.items():
        if f != 1:
            print(f"{a.variant}, {f:g}x SFT budget: relative performance {v:.1f} against {rel[1.0]:.1f} at the grid's "
                  f"1x, a difference of {v - rel[1.0]:+.1f}" + ("" if base else " (100 = the grid's baseline)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
