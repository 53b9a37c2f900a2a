"""The paper's tables as Markdown, CSV and LaTeX.

    python -m dualspeed.report.tables --config-json '<pipeline config>' --table main --out results/tables/main
"""
from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path

import pandas as pd
import yaml

from .. import cli
from ..grid.recipe import has_pretraining
from ..grid.variants import (DESCRIPTIONS, PRETRAINING_TABLES, own_modes, pdrop_inference_path, table_points,
                             trained_for, vtp_inference_paths)
from ..modes import PDROP_MODE
from .collect import Scorer, metrics, sft_only_note, vtp_metrics
from .stats import Stat, diff, stat

REL = ("Relative performance = mean over benchmarks of (score / baseline score under normal inference), in %.")
SPD = ("Speedup = baseline training wall time / variant wall time, per stage and overall "
       "(pretraining + SFT; the tiny recipe's shared stand-ins for CLIP and Vicuna are excluded, as their pretraining is).")
COMPUTE = ("Compute speedup = baseline training FLOPs / variant FLOPs (dualspeed/flops.py, from the token counts "
           "of the steps each run took): the limit of the measured speedup if time followed FLOPs.")
PAPER = "Columns marked 'paper' are the published LLaVA-1.5-7B numbers; '-' where the paper reports none."
PMOD = ("p-MoD's paper numbers are its average score over the baseline's (the paper gives averages only) and "
        "1 / its fraction of the baseline's training GPU hours.")
PDROP = ("PyramidDrop's paper numbers are the mean of its five benchmark scores over its vanilla row's (which equals "
         "LLaVA-1.5's published one) and its 104 -> 79 training GPU hours. 'PyramidDrop inference %' is a row under "
         "PyramidDrop's own dropping inference (the settings it trained with); its other columns are under normal "
         "(dense) inference.")
PAPER_NEXT = ("Columns marked 'paper' are the published LLaVA-NeXT-7B numbers (DualSpeed's, p-MoD's and PyramidDrop's "
              "training time); "
              "'-' where the paper reports none.")
PAPER_NEXT_ABLATIONS = ("Columns marked 'paper' are the published LLaVA-1.5-7B numbers: the paper reports this "
                        "table for LLaVA-1.5 only.")


def paper_reference() -> dict:
    return yaml.safe_load(resources.files("dualspeed.report").joinpath("paper_reference.yaml").read_text())


def is_llava_next(cfg: dict) -> bool:
    """An anyres recipe: the paper's LLaVA-NeXT-7B numbers are the ones to compare with."""
    return bool(cfg.get("model", {}).get("image_grid_pinpoints"))


def _main_reference(ref: dict, cfg: dict) -> dict:
    if not is_llava_next(cfg):
        return ref["main"]
    return {"baseline": ref["main"]["baseline"], "dualspeed": ref["main"]["dualspeed_llava_next"],
            "pmod": ref["main"]["pmod_llava_next"], "pdrop": ref["main"]["pdrop_llava_next"]}


_FIXED_LABELS = {"baseline": "baseline", "pmod": "p-MoD (PRD, no VTP)",  # variants without a method, p or r
                 "pdrop": "PyramidDrop (no VTP)"}


def _label(pt) -> str:
    if pt.variant in _FIXED_LABELS:
        return _FIXED_LABELS[pt.variant]
    extra = f" r={pt.r:g}" if pt.r else ""
    return f"{pt.variant} ({pt.method}, p={pt.p:g}{extra})"


SEEDS = ("Each cell is the mean over the row's seeds ± the half-width of its 95% t-interval (no interval: one "
         "seed); the seeds of each row are in the CSV's 'seeds' column.")
DELTA = ("'Δ vs previous' is the difference in normal-inference relative performance from the row above with its "
         "95% interval (Welch's; for a one-seed row, the seed-to-seed spread pooled over this table's seeded rows' "
         "evaluations of its kind: evaluated as the row trained, or under an inference its SFT never saw); "
         "* marks an interval that excludes 0, a difference outside the run-to-run noise.")


def _seeds(sc: Scorer, pt) -> str:
    return " ".join(str(s) for s in sc.seeds_of(pt))


def _score_stats(cfg: dict, sc: Scorer, pt) -> dict:
    per = [metrics(cfg, run, "normal")["scores"] for run in sc.runs(pt)]
    return {k: stat([d[k] for d in per]) for k in per[0]}


def build(cfg: dict, name: str) -> tuple[pd.DataFrame, str]:
    if name == "findings":
        from .findings import findings_table

        return findings_table(cfg)
    pts = table_points(cfg["grid"])[name]
    if not has_pretraining(cfg) and name in PRETRAINING_TABLES:
        return pd.DataFrame([{"run": _label(pt), "what": DESCRIPTIONS[pt.variant], "result": "not run"} for pt in pts]), \
            f"{name}: not run. {sft_only_note(cfg)}"
    sc = Scorer(cfg)
    ref = paper_reference()
    modes = cfg["eval"]["modes"]
    paper = PAPER_NEXT_ABLATIONS if is_llava_next(cfg) else PAPER
    rows = []
    if name == "main":
        main_ref = _main_reference(ref, cfg)
        for pt in pts:
            sp = sc.speed_stats(pt)
            rows.append({"run": _label(pt), "seeds": _seeds(sc, pt), **_score_stats(cfg, sc, pt),
                         "rel. perf. %": sc.rel_stat(pt),
                         "PyramidDrop inference %": sc.rel_stat(pt, PDROP_MODE) if own_modes(pt) else None,
                         "pretrain s": sp["pretrain_s"], "SFT s": sp["sft_s"],
                         "speedup pretrain": sp["speedup_pretrain"], "speedup SFT": sp["speedup_sft"],
                         "speedup overall": sp["speedup_overall"], "compute speedup SFT": sp["compute_speedup_sft"],
                         "compute speedup overall": sp["compute_speedup_overall"],
                         "peak mem SFT MiB": sp["sft_peak_mem_mib"],
                         "paper rel. perf. %": main_ref.get(pt.variant, {}).get("rel_perf"),
                         "paper speedup": main_ref.get(pt.variant, {}).get("speedup_overall")})
        caption = (f"Main results (normal inference). {REL} {SPD} {COMPUTE} Peak memory: the largest SFT step's "
                   f"(CUDA: allocated; CPU: the process's peak RSS). {SEEDS} "
                   f"{PAPER_NEXT if is_llava_next(cfg) else PAPER} {PMOD} {PDROP}")
    elif name == "mismatch":
        for pt in pts:
            row = {"run": _label(pt), "seeds": _seeds(sc, pt)}
            for mode in modes:
                row[f"{mode} %"] = sc.rel_stat(pt, mode)
                row[f"paper {mode} %"] = ref["mismatch"].get(pt.variant, {}).get(mode)
            rows.append(row)
        caption = (f"Training-inference mismatch: each run under normal inference, pruned inference (the run's VTP "
                   f"method and p, with the isolator) and pruned inference without the isolator (the same evaluation "
                   f"as pruned for a run that trained no isolator). {REL} {SEEDS} {paper}")
    elif name in ("ablation", "per_stage"):
        pools = {kind: sc.pooled(pts, as_trained=kind) for kind in (True, False)}  # for one-seed rows, by kind
        prev = prev_pt = None
        for pt in pts:
            sp = sc.speed_stats(pt)
            cur = sc.rel_stat(pt)
            row = {"run": _label(pt), "what": DESCRIPTIONS[pt.variant], "seeds": _seeds(sc, pt)}
            row.update({f"{mode} %": sc.rel_stat(pt, mode) for mode in modes})
            one = pt if cur.n < 2 else prev_pt
            if prev is not None:
                row["Δ vs previous"] = diff(cur, prev, pools[trained_for(one, "normal")]).fmt()
            else:
                row["Δ vs previous"] = None
            row["speedup overall"] = sp["speedup_overall"]
            row["compute speedup overall"] = sp["compute_speedup_overall"]
            row["paper normal %"] = ref[name].get(pt.variant)
            rows.append(row)
            prev, prev_pt = cur, pt
        caption = ("Component ablation: NaivePrune -> + fast-slow -> + isolator -> + distillation (= DualSpeed), "
                   "and DualSpeed without the isolator. " if name == "ablation" else
                   "VTP per stage: none, pretraining only, SFT only, both (= NaivePrune). ") + \
            f"{REL} {SPD} {COMPUTE} {SEEDS} {DELTA} {paper}"
    elif name == "vtp_inference":
        rows, caption = _vtp_inference(cfg, pts, sc)
    else:
        for pt in pts:
            sp = sc.speed_stats(pt)
            row = {"run": _label(pt), "method": pt.method, "p": pt.p, "r": pt.r, "seeds": _seeds(sc, pt)}
            row.update({f"{mode} %": sc.rel_stat(pt, mode) for mode in modes})
            row.update({"speedup pretrain": sp["speedup_pretrain"], "speedup SFT": sp["speedup_sft"],
                        "speedup overall": sp["speedup_overall"], "compute speedup overall": sp["compute_speedup_overall"]})
            rows.append(row)
        what = {"methods": "VTP method comparison (DualSpeed with each registered method)",
                "p_sweep": f"Sweep of the pruning ratio p (DualSpeed). Paper: {ref['sweeps']['p']}",
                "r_sweep": f"Sweep of the slow-mode probability r (DualSpeed). Paper: {ref['sweeps']['r']}"}[name]
        caption = f"{what}. {REL} {SPD} {COMPUTE} {SEEDS}"
    if not has_pretraining(cfg):
        caption += " " + sft_only_note(cfg)
    if sc.excluded:
        caption += f" Left out of relative performance (baseline scores 0): {', '.join(sc.excluded)}."
    if sc.at_chance:
        caption += " Left out of relative performance (the baseline answers at chance, so every run would keep " \
                   "~100% of it): " + ", ".join(f"{k} (baseline {v:.1f}%, chance {c:g}%)"
                                                 for k, (v, c) in sorted(sc.at_chance.items())) + "."
    return pd.DataFrame(rows), caption


def _vtp_inference(cfg: dict, pts, sc: Scorer) -> tuple[list[dict], str]:
    """Each method used training-free (the baseline checkpoint, pruned at inference) beside DualSpeed trained
    with it (the same pruned inference, and normal inference)."""
    g = cfg["grid"]
    trained = {pt.method: pt for pt in pts if pt.variant == "dualspeed"}
    rows = []
    for method, path in vtp_inference_paths(g).items():
        m = vtp_metrics(cfg, path)
        vtp_info = m.get("vtp") or {}
        rows.append({"method": method, "kind": vtp_info.get("kind"), "visual tokens": m.get("visual_tokens_per_sample"),
                     "baseline pruned %": sc.rel_perf_of(m["scores"], path),
                     "DualSpeed seeds": _seeds(sc, trained[method]),
                     "DualSpeed pruned %": sc.rel_stat(trained[method], "pruned"),
                     "DualSpeed normal %": sc.rel_stat(trained[method], "normal")})
    pdrop = next((pt for pt in pts if pt.variant == "pdrop"), None)
    if pdrop is not None:  # the in-LLM family: used training-free on the baseline, beside PyramidDrop trained
        path = pdrop_inference_path(g)
        m = vtp_metrics(cfg, path)
        rows.append({"method": "PyramidDrop (in the LLM)", "kind": "in-LLM drop",
                     "visual tokens": m.get("visual_tokens_per_sample"),
                     "baseline pruned %": sc.rel_perf_of(m["scores"], path),
                     "DualSpeed seeds": _seeds(sc, pdrop), "DualSpeed pruned %": sc.rel_stat(pdrop, PDROP_MODE),
                     "DualSpeed normal %": sc.rel_stat(pdrop, "normal")})
    caption = (f"VTP methods at p={g['p']:g}: training-free (the baseline checkpoint of the first seed under pruned "
               f"inference, the classic comparison) beside DualSpeed trained with the same method, under the same "
               f"pruned inference and under normal inference. {REL} {SEEDS}")
    if pdrop is not None:
        caption += (" The PyramidDrop row: the baseline checkpoint under PyramidDrop's dropping inference (training-"
                    "free), beside the PyramidDrop row trained with it, under the same dropping inference ('pruned' "
                    "columns) and under normal inference; its 'visual tokens' are those fed to the LLM's first stage.")
    return rows, caption


def _cell(v, digits: int = 2):
    if isinstance(v, Stat):
        return v.fmt(digits)
    if v is None or (isinstance(v, float) and math.isnan(v)):  # pandas turns a missing value into NaN
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return v


def _numeric(df: pd.DataFrame) -> pd.DataFrame:
    """The CSV: a Stat column becomes its mean and its interval's half-width ('<col> ±95')."""
    out = {}
    for col in df.columns:
        vals = list(df[col])
        if any(isinstance(v, Stat) for v in vals):
            out[col] = [v.mean if isinstance(v, Stat) else v for v in vals]
            out[f"{col} ±95"] = [v.half if isinstance(v, Stat) else None for v in vals]
        else:
            out[col] = vals
    return pd.DataFrame(out).round(4)


def write(df: pd.DataFrame, caption: str, prefix: Path) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".csv").write_text(_numeric(df).to_csv(index=False))
    shown = df.map(_cell)
    md = shown.to_markdown(index=False, disable_numparse=True)
    prefix.with_suffix(".md").write_text(f"**{prefix.stem}.** {caption}\n\n{md}\n")
    tex = shown.to_latex(index=False, caption=caption, label=f"tab:{prefix.stem}", escape=True)
    prefix.with_suffix(".tex").write_text(tex)


def main(argv=None):
    ap = cli.ArgumentParser(description=__doc__)
    ap.add_argument("--config-json", required=True)
    ap.add_argument("--table", required=True)
    ap.add_argument("--out", required=True, help="output prefix; .md, .csv and .tex are written")
    a = ap.parse_args(argv)
    cfg = json.loads(a.config_json)
    df, caption = build(cfg, a.table)
    write(df, caption, Path(a.out))
    print(Path(a.out).with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
