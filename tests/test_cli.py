"""The command lines a user types: help that keeps its line breaks and answers at once, errors that name the option,
the key or the file in one line instead of a traceback."""
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_module_docstrings_keep_their_line_breaks():
    """A backslash at a line's end inside a docstring joins the lines: the shell continuation of an example
    command vanished from --help (`--image-folder DIR         [--pretrain-json ...`)."""
    joined = []
    for f in sorted((ROOT / "dualspeed").rglob("*.py")):
        src = f.read_text()
        body = ast.parse(src).body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            if re.search(r"(?<!\\)\\\n", ast.get_source_segment(src, body[0])):
                joined.append(str(f.relative_to(ROOT)))
    assert joined == []
    out = cli("dualspeed.data", "local", "--help").stdout
    assert "--image-folder DIR \\\n        [--pretrain-json FILE" in out


def test_train_help_is_fast_and_says_what_the_config_file_is():
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "dualspeed.train", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0
    imported = {line.split("|")[-1].strip() for line in res.stderr.splitlines() if "|" in line}
    assert not {"torch", "transformers", "numpy"} & imported  # --help answers before the heavy imports
    assert "python -m dualspeed.grid spec sft" in res.stdout and "docs/training-by-hand.md" in res.stdout


def test_train_config_errors_are_one_line_naming_the_key_option_or_file(tmp_path):
    res = cli("dualspeed.train", "--set", "train.seed=-1", "output_dir=x", "model.source=tiny", "model.tokenizer=t")
    assert res.returncode != 0 and res.stderr.strip().splitlines() == [
        "python -m dualspeed.train: config key 'train.seed' must be in [0, 2**32) (numpy's seed range) (got -1)"]
    res = cli("dualspeed.train", "--spec", "{bad")
    assert res.returncode != 0 and res.stderr.startswith("python -m dualspeed.train: --spec is not valid JSON")
    assert "Traceback" not in res.stderr
    bad = tmp_path / "run.yaml"
    bad.write_text("train: [1\n")
    res = cli("dualspeed.train", "--config", str(bad))
    assert res.returncode != 0 and f"config file {bad} is not valid YAML" in res.stderr and "Traceback" not in res.stderr
    res = cli("dualspeed.train", "--set", "train.bogus=1", "output_dir=x")
    assert res.returncode != 0 and "unknown config key 'train.bogus'" in res.stderr and "Traceback" not in res.stderr


def test_the_spec_of_a_grid_point_is_what_the_pipeline_passes_and_trains_by_hand(tmp_path):
    """`python -m dualspeed.grid spec` prints the run config the pipeline's job gets (compared with the --spec of
    the dry run's command), and the commented example of docs/training-by-hand.md is a valid run config."""
    from dualspeed.config import load_config

    point = "dualspeed/divprune/p0.9/r0.1/s0"
    res = cli("dualspeed.grid", "spec", "sft", point, "--configfile", "config/smoke.yaml")
    assert res.returncode == 0, res.stderr
    spec = yaml.safe_load(res.stdout)
    plan = subprocess.run([sys.executable, "-m", "snakemake", f"runs/smoke/sft/{point}/timing.json", "-n", "-p",
                           "--forceall", "--cores", "1", "--configfile", "config/smoke.yaml"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    line = next(ln for ln in (plan.stdout + plan.stderr).splitlines()
                if "dualspeed.train --spec" in ln and f'"output_dir": "runs/smoke/sft/{point}"' in ln)
    passed = json.loads(re.search(r"--spec '(.*?)' >", line).group(1))
    assert spec == passed
    (tmp_path / "run.yaml").write_text(res.stdout)
    assert load_config(tmp_path / "run.yaml").fastslow.slow_prob == 0.1
    res = cli("dualspeed.grid", "spec", "sft", "dualspeed/nosuch/p0.9/r0.1/s0")
    assert res.returncode == 2 and "is not a sft training of this grid" in res.stderr
    example = (ROOT / "docs" / "training-by-hand.md").read_text().split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "example.yaml").write_text(example)
    cfg = load_config(tmp_path / "example.yaml")
    assert cfg.train.stage == "sft" and cfg.fastslow.method == "divprune"
