import pytest

from dualspeed.report.collect import MissingRun
from dualspeed.report.figures import pareto_front, place_labels
from dualspeed.report.tables import build, paper_reference


def _cfg(tmp_path):
    return {"grid": {"method": "divprune", "p": 0.9, "r": 0.1, "methods": ["divprune"], "p_sweep": [0.9],
                     "r_sweep": [0.1]},
            "runs_dir": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results"),
            "eval": {"modes": ["normal", "pruned", "pruned_noiso"]}}


def test_missing_run_is_named_with_the_command_to_build_it(tmp_path):
    with pytest.raises(MissingRun) as e:
        build(_cfg(tmp_path), "main")
    msg = str(e.value)
    assert "baseline/none/p0/r0" in msg and "normal" in msg and "snakemake" in msg


def test_pareto_front_keeps_only_undominated_points():
    pts = [(1.0, 100.0), (1.5, 90.0), (1.4, 80.0), (2.0, 50.0), (1.5, 85.0)]
    assert pareto_front(pts) == [(1.0, 100.0), (1.5, 90.0), (2.0, 50.0)]


def test_pareto_labels_of_crowded_points_do_not_overprint():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    pts = [(1.27, 85.0), (1.275, 82.4), (1.5, 81.1), (1.48, 76.7), (1.62, 76.1), (1.66, 68.3), (1.7, 68.5)]
    ax.scatter(*zip(*pts))
    ax.scatter([1.0, 2.0], [100.0, 36.0])
    place_labels(ax, [(xy, f"p={xy[0]:g},r={xy[1]:g}") for xy in pts])
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    plt.close(fig)
    assert len(boxes) == len(pts)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_paper_reference_holds_the_headline_numbers():
    ref = paper_reference()
    assert ref["main"]["dualspeed"] == {"rel_perf": 99.61, "speedup_overall": 2.1, "speedup_pretrain": 5.8}
    assert ref["ablation"] == {"naiveprune": 95.89, "fastslow": 98.88, "fastslow_iso": 99.32, "dualspeed": 99.61}
    pd = ref["pdrop"]["llava15"]  # the PyramidDrop row's relative performance is its five scores over its vanilla row's
    rel = 100 * sum(pd["pdrop"][k] / pd["baseline"][k] for k in pd["baseline"]) / len(pd["baseline"])
    assert ref["main"]["pdrop"]["rel_perf"] == pytest.approx(rel, abs=0.005)
    assert ref["main"]["pdrop"]["speedup_overall"] == pytest.approx(104 / 79, abs=0.005)


def test_vtp_inference_table_sets_training_free_beside_trained(tmp_path):
    import json
    from pathlib import Path

    from dualspeed.grid import recipe
    from dualspeed.grid.variants import point

    cfg = _cfg(tmp_path)
    cfg["grid"]["methods"] = ["divprune", "tome"]

    def put(path, obj):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj))

    res = tmp_path / "results"
    base = point("baseline", "divprune", 0.9, 0.1)
    put(res / "metrics" / base.path / "normal.json", {"scores": {"a": 0.8, "b": 0.4}})
    for pt in [base] + [point("dualspeed", m, 0.9, 0.1) for m in ("divprune", "tome")]:
        put(Path(recipe.sft_dir(cfg, pt)) / "timing.json", {"train_runtime_s": 10.0})
        put(Path(recipe.pretrain_dir(cfg, pt.pretrain_tag)) / "timing.json", {"train_runtime_s": 5.0})
    scores = {"divprune": ({"a": 0.4, "b": 0.4}, {"a": 0.8, "b": 0.2}), "tome": ({"a": 0.2, "b": 0.2}, {"a": 0.8, "b": 0.4})}
    for m, (free, trained) in scores.items():
        # the grid's own method used training-free is the baseline's pruned evaluation: one file, not two
        where = res / "metrics" / base.path / "pruned.json" if m == "divprune" else res / "vtp_inference" / m / "p0.9.json"
        put(where, {"scores": free, "visual_tokens_per_sample": 6, "vtp": {"kind": "merge" if m == "tome" else "select"}})
        pt = point("dualspeed", m, 0.9, 0.1)
        put(res / "metrics" / pt.path / "pruned.json", {"scores": trained})
        put(res / "metrics" / pt.path / "normal.json", {"scores": {"a": 0.8, "b": 0.4}})
    # PyramidDrop: the baseline under its dropping inference, training-free, beside the PyramidDrop row trained
    pd = point("pdrop", "divprune", 0.9, 0.1)
    put(Path(recipe.sft_dir(cfg, pd)) / "timing.json", {"train_runtime_s": 8.0})
    put(Path(recipe.pretrain_dir(cfg, pd.pretrain_tag)) / "timing.json", {"train_runtime_s": 4.0})
    put(res / "metrics" / base.path / "pdrop.json", {"scores": {"a": 0.6, "b": 0.4}, "visual_tokens_per_sample": 64})
    put(res / "metrics" / pd.path / "pdrop.json", {"scores": {"a": 0.8, "b": 0.3}})
    put(res / "metrics" / pd.path / "normal.json", {"scores": {"a": 0.8, "b": 0.2}})
    df, caption = build(cfg, "vtp_inference")
    rows = df.set_index("method")
    free = rows.loc["PyramidDrop (in the LLM)"]
    assert free["baseline pruned %"] == pytest.approx(100 * (0.75 + 1.0) / 2) and free["kind"] == "in-LLM drop"
    assert free["DualSpeed pruned %"].mean == pytest.approx(100 * (1.0 + 0.75) / 2)
    assert free["DualSpeed normal %"].mean == pytest.approx(100 * (1.0 + 0.5) / 2)
    assert "PyramidDrop's dropping inference" in caption
    assert rows.loc["divprune", "baseline pruned %"] == pytest.approx(100 * (0.5 + 1.0) / 2)
    assert rows.loc["tome", "baseline pruned %"] == pytest.approx(100 * (0.25 + 0.5) / 2)
    assert rows.loc["divprune", "DualSpeed pruned %"].mean == pytest.approx(100 * (1.0 + 0.5) / 2)
    assert rows.loc["tome", "DualSpeed normal %"].mean == pytest.approx(100.0)
    assert rows.loc["tome", "kind"] == "merge" and "training-free" in caption


def test_speedups_carry_the_compute_speedup_from_recorded_flops(tmp_path):
    import json

    from dualspeed.report.collect import Scorer
    from dualspeed.grid.variants import point

    cfg = _cfg(tmp_path)
    runs = {point("baseline", "divprune", 0.9, 0.1): (10.0, 40.0, 4e12, 8e12, {"full": 3 * 2**20}),
            point("naiveprune", "divprune", 0.9, 0.1): (5.0, 20.0, 1e12, 2e12, {"fast": 2**20})}
    assert [pt.pretrain_tag for pt in runs] == ["full_s0", "divprune_p0.9_noiso_s0"]
    for pt, (pre_s, sft_s, pre_f, sft_f, peak) in runs.items():
        for d, t in ((tmp_path / "runs" / "pretrain" / pt.pretrain_tag, {"train_runtime_s": pre_s, "flops": pre_f}),
                     (tmp_path / "runs" / "sft" / pt.path, {"train_runtime_s": sft_s, "flops": sft_f,
                                                           "peak_memory_bytes": peak})):
            d.mkdir(parents=True, exist_ok=True)
            (d / "timing.json").write_text(json.dumps(t))
        m = tmp_path / "results" / "metrics" / pt.path
        m.mkdir(parents=True)
        (m / "normal.json").write_text(json.dumps({"scores": {"a": 1.0}}))
    sp = Scorer(cfg).speedups(point("naiveprune", "divprune", 0.9, 0.1))
    assert sp["speedup_overall"] == 2.0 and sp["compute_speedup_sft"] == 4.0
    assert sp["compute_speedup_overall"] == 12e12 / 3e12 and sp["sft_peak_mem_mib"] == 1.0
