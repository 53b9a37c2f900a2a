"""Seeds as a grid dimension: which rows get which seeds, intervals over seeds, and the findings' verdicts."""
import json
from pathlib import Path

import pytest
from scipy import stats as st

from dualspeed.grid import recipe
from dualspeed.report.findings import MARGIN, verdict
from dualspeed.report.stats import Diff, Pooled, diff, stat
from dualspeed.report.tables import build
from dualspeed.grid.variants import (all_points, every_seed, metrics_relpath, point, point_seeds, trained_for,
                                    vtp_inference_paths)
from dualspeed.modes import PDROP_MODE

GRID = {"method": "divprune", "p": 0.9, "r": 0.1, "methods": ["divprune", "tome"], "p_sweep": [0.5, 0.9],
        "r_sweep": [0.1, 0.5], "seeds": [0, 1, 2], "seeded_tables": ["main", "mismatch", "ablation"]}


def test_seeded_tables_get_every_seed_and_the_rest_the_first():
    ps = point_seeds(GRID)
    assert ps[point("baseline", "x", 0, 0)] == [0, 1, 2]
    assert ps[point("dualspeed", "divprune", 0.9, 0.1)] == [0, 1, 2]  # in main, and in the sweeps
    assert ps[point("vtp_pretrain", "divprune", 0.9, 0.1)] == [0]
    assert ps[point("dualspeed", "divprune", 0.5, 0.1)] == [0]
    pts = all_points(GRID)
    assert len(pts) == len(set(pts))
    # a seed never shares a pretraining run with another seed
    tags = {}
    for pt in pts:
        tags.setdefault(pt.pretrain_tag, set()).add(pt.seed)
    assert all(len(s) == 1 for s in tags.values())
    assert {"full_s0", "full_s1", "full_s2", "divprune_p0.9_iso_s2"} <= set(tags)


def test_seeded_variants_get_every_seed_in_any_table():
    grid = dict(GRID, seeded_tables=["mismatch"], seeded_variants=["fastslow", "fastslow_iso"])
    ps = point_seeds(grid)
    assert ps[point("fastslow", "divprune", 0.9, 0.1)] == [0, 1, 2]  # an ablation row, the table left at one seed
    assert ps[point("fastslow_iso", "divprune", 0.9, 0.1)] == [0, 1, 2]
    assert ps[point("dualspeed_noiso", "divprune", 0.9, 0.1)] == [0]
    assert ps[point("naiveprune", "divprune", 0.9, 0.1)] == [0, 1, 2]  # a mismatch row
    with pytest.raises(ValueError, match="unknown variant.*'fast_slow'.*fastslow_iso"):
        point_seeds(dict(GRID, seeded_variants=["fast_slow"]))


def test_the_seed_is_the_runs_seed():
    cfg = {"runs_dir": "runs/x", "data": {"kind": "synthetic", "root": "r"}, "model": {"source": "tiny"},
           "pretrain": {"train": {"lr": 1e-3}}, "sft": {"train": {"lr": 1e-3}},
           "fastslow": {"isolator_len": 4, "tau": 1.0, "lam": 1.0}}
    pt = point("dualspeed", "divprune", 0.9, 0.1, seed=2)
    assert recipe.pretrain_spec(cfg, pt)["train"]["seed"] == 2 and recipe.sft_spec(cfg, pt)["train"]["seed"] == 2
    assert recipe.sft_spec(cfg, pt)["output_dir"].endswith("/s2")
    assert recipe.sft_spec(cfg, pt)["model"]["path"] == "runs/x/pretrain/divprune_p0.9_iso_s2/hf"


def test_the_grids_own_method_used_training_free_is_the_baselines_pruned_evaluation():
    paths = vtp_inference_paths(GRID)
    assert paths["divprune"] == "metrics/baseline/none/p0/r0/s0/pruned.json"
    assert paths["tome"] == "vtp_inference/tome/p0.9.json"


def test_t_interval_and_welch_difference():
    s = stat([1.0, 2.0, 3.0])
    assert s.mean == 2.0 and s.half == pytest.approx(st.t.ppf(0.975, 2) * 1.0 / 3 ** 0.5)
    assert stat([5.0]).half is None and stat([5.0]).fmt() == "5.00"
    a, b = stat([10.0, 10.5, 9.5]), stat([1.0, 1.5, 0.5])
    d = diff(a, b)
    assert d.how == "welch" and d.outside and d.lo < 9 < d.hi
    assert not diff(stat([1.0, 3.0]), stat([2.0, 2.5])).outside
    # a one-seed row: the pooled spread stands in; without one there is no interval
    pooled = Pooled.of([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0]])
    assert pooled.sd == pytest.approx(1.0) and pooled.dof == 4
    one = diff(stat([9.0]), s, pooled)
    assert one.how == "pooled (sd 1.00, 4 dof)" and one.hi - one.lo == pytest.approx(2 * st.t.ppf(0.975, 4) * (1 + 1 / 3) ** 0.5)
    assert diff(stat([9.0]), stat([1.0])).lo is None


@pytest.mark.parametrize("lo,hi,claim,want", [
    (0.5, 3.0, ">", "reproduced"), (-3.0, -0.5, ">", "not reproduced"), (-1.0, 2.0, ">", "inconclusive"),
    (-3.0, -0.5, "<", "reproduced"), (-1.5, 1.5, "≈", "reproduced"), (MARGIN + 0.1, 9.0, "≈", "not reproduced"),
    (-1.0, MARGIN + 1, "≈", "inconclusive")])
def test_verdicts(lo, hi, claim, want):
    assert verdict(Diff((lo + hi) / 2, lo, hi, "welch"), claim) == want
    assert verdict(Diff(1.0, None, None, "none"), claim).startswith("inconclusive")


def _fake_grid(tmp_path, normal: dict[str, list[float]], pruned: dict[str, list[float]] | None = None, **grid_kw):
    """Runs of the given rows with the given per-seed score on one benchmark (pruned = normal unless given)."""
    grid = {**GRID, "methods": ["divprune"], "p_sweep": [0.9], "r_sweep": [0.1], **grid_kw}
    cfg = {"grid": grid, "runs_dir": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results"),
           "eval": {"modes": ["normal", "pruned", "pruned_noiso"]}}
    for variant, scores in normal.items():
        row = point(variant, "divprune", 0.9, 0.1)
        for seed, score in zip(point_seeds(grid)[row], scores):
            pt = row.with_seed(seed)
            for d in (Path(recipe.sft_dir(cfg, pt)), Path(recipe.pretrain_dir(cfg, pt.pretrain_tag))):
                d.mkdir(parents=True, exist_ok=True)
                (d / "timing.json").write_text(json.dumps({"train_runtime_s": 10.0, "flops": 1e12}))
            for mode in ("normal", "pruned", "pruned_noiso"):
                f = Path(cfg["results_dir"]) / metrics_relpath(pt, mode)
                f.parent.mkdir(parents=True, exist_ok=True)
                own = (pruned or {}).get(variant)
                f.write_text(json.dumps({"scores": {"a": own[seed] if own and mode != "normal" else score}}))
    return cfg


def test_ablation_marks_differences_outside_the_interval(tmp_path):
    cfg = _fake_grid(tmp_path, {"baseline": [80, 82, 81], "naiveprune": [40, 44, 42], "fastslow": [79, 80, 81],
                                "fastslow_iso": [80, 79, 81], "dualspeed": [81, 80, 82],
                                "dualspeed_noiso": [60, 61, 59]})
    df, caption = build(cfg, "ablation")
    rows = df.set_index("run")
    base = rows.iloc[0]["normal %"]
    assert base.mean == pytest.approx(100.0) and base.n == 3 and base.half > 0
    delta = list(rows["Δ vs previous"])
    assert not isinstance(delta[0], str)  # the first row has no previous row
    assert delta[1].endswith("*") and delta[1].startswith("-")  # NaivePrune falls: outside the noise
    assert delta[2].endswith("*")  # fast-slow recovers
    assert not delta[3].endswith("*") and not delta[4].endswith("*")  # isolator, distillation: inside the noise
    assert rows.iloc[1]["seeds"] == "0 1 2" and "95% t-interval" in caption


def test_table_files_carry_mean_and_interval(tmp_path):
    from dualspeed.report.tables import write

    cfg = _fake_grid(tmp_path, {"baseline": [80, 82, 81], "naiveprune": [40, 44, 42], "dualspeed": [81, 80, 82]})
    df, caption = build(cfg, "mismatch")
    write(df, caption, tmp_path / "t" / "mismatch")
    md = (tmp_path / "t" / "mismatch.md").read_text()
    assert "51.85 ± " in md  # NaivePrune: 42 / 81 of the baseline
    csv = (tmp_path / "t" / "mismatch.csv").read_text().splitlines()
    assert "normal % ±95" in csv[0].split(",")


def test_a_task_the_baseline_answers_at_chance_is_left_out_and_named(tmp_path):
    from dualspeed.report.collect import Scorer, chance_bound

    cfg = _fake_grid(tmp_path, {"baseline": [80, 82, 81], "naiveprune": [40, 44, 42], "dualspeed": [81, 80, 82]})
    for f in Path(cfg["results_dir"]).rglob("*.json"):  # a second task, answered at chance by everyone
        m = json.loads(f.read_text())
        f.write_text(json.dumps({**m, "scores": {**m["scores"], "yesno": 52.0}, "samples": 400}))
    assert chance_bound(50, 200) == pytest.approx(50 + 100 * 1.645 * 0.5 / 200 ** 0.5)
    assert Scorer(cfg).benchmarks == ["a", "yesno"]  # no chance level configured: kept
    cfg["eval"]["chance"] = {"yesno": 50, "a": 50}
    sc = Scorer(cfg)
    assert sc.benchmarks == ["a"] and set(sc.at_chance) == {"yesno"}
    assert sc.rel_stat(point("naiveprune", "divprune", 0.9, 0.1)).mean == pytest.approx(100 * 42 / 81)
    df, caption = build(cfg, "mismatch")
    assert "yesno (baseline 52.0%, chance 50%)" in caption


def test_a_baseline_above_chance_only_by_its_question_count_but_not_by_its_seeds_is_left_out(tmp_path):
    from dualspeed.report.collect import Scorer

    cfg = _fake_grid(tmp_path, {"baseline": [80, 82, 81], "naiveprune": [40, 44, 42], "dualspeed": [81, 80, 82]})
    yesno = {0: 50.5, 1: 60.5, 2: 50.5}  # the default grid's baseline presence: 53.8 ± 14.3 over seeds
    for f in Path(cfg["results_dir"]).rglob("*.json"):
        m = json.loads(f.read_text())
        seed = int(f.parent.name[1:])
        f.write_text(json.dumps({**m, "scores": {**m["scores"], "yesno": yesno[seed]}, "samples": 400}))
    cfg["eval"]["chance"] = {"yesno": 50}
    assert set(Scorer(cfg).at_chance) == {"yesno"}  # 53.8 clears the binomial bound (53.4), not the seeds'
    df, _ = build(cfg, "mismatch")
    from dualspeed.report.tables import _cell
    assert _cell(df.iloc[0]["paper pruned %"]) == "-" and _cell(float("nan")) == "-"


def test_a_variant_can_have_extra_seeds_in_every_table():
    grid = dict(GRID, seeded_tables=["mismatch"], extra_seeds=[3, 4], extra_seeded_variants=["naiveprune"])
    ps = point_seeds(grid)
    assert ps[point("naiveprune", "divprune", 0.9, 0.1)] == [0, 1, 2, 3, 4]  # in mismatch, ablation, per_stage
    assert ps[point("dualspeed", "divprune", 0.9, 0.1)] == [0, 1, 2]
    assert ps[point("vtp_sft", "divprune", 0.9, 0.1)] == [0]
    assert every_seed(grid) == [0, 1, 2, 3, 4]
    tags = {pt.pretrain_tag for pt in all_points(grid)}
    assert "divprune_p0.9_noiso_s4" in tags and "full_s4" not in tags  # its own pretraining, nothing else's
    assert point_seeds(dict(grid, extra_seeds=[])) == point_seeds(dict(GRID, seeded_tables=["mismatch"]))
    with pytest.raises(ValueError, match="extra_seeded_variants names unknown variant.*'naive'"):
        point_seeds(dict(GRID, extra_seeds=[3], extra_seeded_variants=["naive"]))


def test_trained_for_names_the_inference_a_rows_sft_saw():
    v = lambda name: point(name, "divprune", 0.9, 0.1)  # noqa: E731
    assert trained_for(v("baseline"), "normal") and not trained_for(v("baseline"), "pruned")
    assert trained_for(v("naiveprune"), "pruned") and not trained_for(v("naiveprune"), "normal")
    assert trained_for(v("naiveprune"), "pruned_noiso")  # no isolator trained: the same evaluation as pruned
    assert trained_for(v("fastslow"), "normal") and trained_for(v("fastslow"), "pruned")  # slow and fast steps
    assert trained_for(v("dualspeed"), "pruned") and not trained_for(v("dualspeed"), "pruned_noiso")
    assert trained_for(v("vtp_pretrain"), "normal") and not trained_for(v("vtp_sft"), "normal")
    assert trained_for(v("pdrop"), PDROP_MODE) and not trained_for(v("pdrop"), "normal")
    assert trained_for(v("pmod"), "normal") and not trained_for(v("baseline"), PDROP_MODE)


def test_a_one_seed_rows_interval_takes_the_spread_of_its_kind(tmp_path):
    # NaivePrune under normal inference swings by seed; every row evaluated as it trained agrees to a point
    cfg = _fake_grid(tmp_path, {"baseline": [80, 81, 80], "vtp_pretrain": [79], "vtp_sft": [50],
                                "naiveprune": [70, 40, 60]},
                     pruned={"naiveprune": [78, 79, 78], "baseline": [40, 45, 38]},
                     seeded_tables=["mismatch"])
    cfg["grid"]["seeds"] = [0, 1, 2]
    from dualspeed.report.collect import Scorer
    sc = Scorer(cfg)
    rows = [point(n, "divprune", 0.9, 0.1) for n in ("baseline", "vtp_pretrain", "vtp_sft", "naiveprune")]
    seeded = [r for r in rows if len(sc.seeds_of(r)) > 1]
    assert [r.variant for r in seeded] == ["baseline", "naiveprune"]
    # VTP in pretraining only under normal inference is evaluated as it trained; VTP in SFT only is not
    assert trained_for(rows[1], "normal") and not trained_for(rows[2], "normal")
    as_trained, not_as = sc.pooled(rows, as_trained=True), sc.pooled(rows, as_trained=False)
    # as trained: the baseline's normal and NaivePrune's pruned inference; not: NaivePrune's normal, the
    # baseline's pruned
    assert as_trained.dof == 4 and as_trained.over == "as trained" and as_trained.sd < 1
    assert not_as.dof == 4 and not_as.over == "not as trained" and not_as.sd > 10
    everything = sc.pooled(rows)  # no kind: every seeded row's normal inference, as before
    assert everything.dof == 4 and as_trained.sd < everything.sd < not_as.sd
    df, _ = build(cfg, "per_stage")
    delta = list(df["Δ vs previous"])
    # VTP in pretraining only, one seed, 1.2 points under the baseline: inside the baseline-like noise, narrowly
    lo, hi = (float(x) for x in delta[1].split("[")[1].split("]")[0].split(","))
    assert hi - lo < 10 and lo < 0 < hi
    lo, hi = (float(x) for x in delta[2].split("[")[1].split("]")[0].split(","))
    assert hi - lo > 50  # VTP in SFT only, under normal inference: NaivePrune's spread
