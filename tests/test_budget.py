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
