"""grid.budget: the baseline's SFT at other budgets, and the relative performance the docs quote."""
import pytest

from dualspeed.grid import budget

TASKS = ["synth_colour", "synth_position"]


def row(factor, seed, colour, position, steps):
    return {"factor": factor, "seed": seed, "steps": steps, "synth_colour": colour, "synth_position": position}


def test_relative_performance_is_against_the_grids_own_budget():
    rows = [row(1.0, 0, 100, 80, 10), row(1.0, 1, 100, 100, 10),
            row(2.0, 0, 100, 90, 20), row(2.0, 1, 100, 90, 20)]
    lines, rel = budget.summarise(rows, TASKS)
    assert rel[1.0] == pytest.approx(100.0)  # the 1x seeds against their own mean
    assert rel[2.0] == pytest.approx(100.0)  # 90 / 90 on position, 100 / 100 on colour
    rows[2]["synth_position"] = 99.0
    _, rel = budget.summarise(rows, TASKS)
    assert rel[2.0] == pytest.approx(100 * (1 + (99 + 90) / 2 / 90) / 2)
    assert lines[0].startswith("| SFT budget | steps |") and "| 2x | 20 |" in lines[-1]


def test_it_refuses_a_grid_whose_baseline_has_not_run(tmp_path, capsys):
    cfg = tmp_path / "where.yaml"
    cfg.write_text(f"runs_dir: {tmp_path / 'runs'}\nresults_dir: {tmp_path / 'results'}\n")
    assert budget.main(["--factors", "2", "--configfile", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "the grid's baseline of seed 0 has not run: run the grid first" in err


def test_it_refuses_a_seed_the_grid_does_not_train(tmp_path, capsys):
    assert budget.main(["--seeds", "7"]) == 2
    assert "the grid has no baseline of seed [7]" in capsys.readouterr().err


def test_a_variant_is_read_against_the_grids_baseline():
    rows = [row(1.0, 0, 50, 40, 10), row(2.0, 0, 100, 80, 20)]
    _, rel = budget.summarise(rows, TASKS, ref={"synth_colour": 100, "synth_position": 80})
    assert rel[1.0] == pytest.approx(100 * (0.5 + 0.5) / 2) and rel[2.0] == pytest.approx(100.0)


def test_a_swept_variant_is_taken_at_the_grids_own_method_p_and_r():
    from dualspeed.grid.__main__ import pipeline_config

    cfg = pipeline_config(["config/full.yaml"])
    pts = budget.variant_points(cfg, [0, 2], "dualspeed")
    g = cfg["grid"]
    assert [(pt.method, pt.p, pt.r, pt.seed) for pt in pts.values()] == [(g["method"], g["p"], g["r"], s) for s in (0, 2)]
    assert budget.where("baseline") == "" and budget.where("vtp_sft") == "vtp_sft/"


def test_it_refuses_a_variant_the_grid_does_not_train(capsys):
    assert budget.main(["--variant", "no_such_row"]) == 2
    assert "the grid trains no 'no_such_row'; its variants: ['baseline'," in capsys.readouterr().err
