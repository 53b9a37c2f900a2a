"""Plan-time validation: command-line values coerced to the schema's types, every error naming the key,
the value and what is allowed on its first line, VTP methods and evaluation tasks checked before planning."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dualspeed.grid.plan_check import PlanError, check, coerce_to_schema

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def with_(**over):
    cfg = copy.deepcopy(DEFAULT)
    for dotted, value in over.items():
        *head, last = dotted.split("__")
        node = cfg
        for h in head:
            node = node.setdefault(h, {})
        node[last] = value
    return cfg


def test_command_line_strings_become_the_schema_types():
    schema = yaml.safe_load(SCHEMA.read_text())
    cfg = coerce_to_schema(with_(grid__p="0.8", grid__p_sweep=["0.5", "0.7"], sft__train={"lr": "1e-3", "bf16": "true",
                                                                                         "batch_size": "4"}), schema)
    assert cfg["grid"]["p"] == 0.8 and cfg["grid"]["p_sweep"] == [0.5, 0.7]
    assert cfg["sft"]["train"] == {"lr": 1e-3, "bf16": True, "batch_size": 4}
    assert coerce_to_schema({"grid": {"method": "1"}}, schema)["grid"]["method"] == "1"  # a string stays one
    assert check(with_(grid__p="0.8"), SCHEMA)["grid"]["p"] == 0.8


@pytest.mark.parametrize("over, first_line", [
    ({"grid__p": "1.5"}, "config key 'grid.p' is 1.5; allowed: < 1"),
    ({"sft__train": {"batch_size": "four"}}, "config key 'sft.train.batch_size' is 'four'; allowed: a value of type integer"),
    ({"eval__backend": "foo"}, "config key 'eval.backend' is 'foo'; allowed: one of synthetic, lmms_eval"),
    ({"grid__bogus": 1}, "unknown config key 'grid.bogus'; allowed: the keys method, methods, p, p_sweep, r, r_sweep"),
    ({"grid__method": "nosuch"}, "config key 'grid.method' is 'nosuch', not a registered VTP method; allowed: cdpruner, divprune"),
    ({"grid__methods": ["divprune", "nosuch"]}, "config key 'grid.methods' names unknown VTP method(s) ['nosuch']"),
    ({"eval__tasks": ["synth_nosuch"]}, "config key 'eval.tasks' names ['synth_nosuch'], not a local task file or a "
                                        "task of the installed lmms-eval; allowed: synth_colour"),
    ({"eval__tasks": ["gqa"], "eval__backend": "synthetic"}, "config key 'eval.tasks' names ['gqa'], not a task of "
                                                             "the synthetic evaluator; allowed: synth_colour"),
])
def test_errors_name_key_value_and_what_is_allowed_first(over, first_line):
    with pytest.raises(PlanError) as e:
        check(with_(**over), SCHEMA)
    assert str(e.value).splitlines()[0].replace("config validation failed: ", "").startswith(first_line), str(e.value)


def test_known_lmms_eval_tasks_pass():
    real = yaml.safe_load((ROOT / "config" / "llava15_7b.yaml").read_text())
    cfg = {**copy.deepcopy(DEFAULT), **real}
    assert check(cfg, SCHEMA)["eval"]["tasks"][0] == "gqa"
    with pytest.raises(PlanError, match="'eval.tasks' names \\['vqa_nosuch'\\]"):
        check({**cfg, "eval": {**cfg["eval"], "tasks": ["gqa", "vqa_nosuch"]}}, SCHEMA)


def test_snakemake_takes_nested_overrides_on_the_command_line(tmp_path):
    smk = [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "results/tables/p_sweep.md"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ok = subprocess.run(smk + ["--config", "grid={p: 0.8, p_sweep: [0.8]}"], cwd=ROOT, capture_output=True, text=True,
                        env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "p0.8" in ok.stdout + ok.stderr
    bad = subprocess.run(smk + ["--config", "eval={tasks: [synth_nosuch]}"], cwd=ROOT, capture_output=True, text=True,
                         env=env, timeout=300)
    assert bad.returncode != 0 and "'eval.tasks' names ['synth_nosuch']" in bad.stdout + bad.stderr


def test_bench_throughput_reads_the_data_its_run_trained_on(synth_dir, tmp_path):
    from dualspeed.bench.throughput import eval_data_of

    run = tmp_path / "run"
    (run / "hf").mkdir(parents=True)
    with pytest.raises(SystemExit, match="pass --data <synthetic data root>"):
        eval_data_of(str(run / "hf"), None)
    (run / "config.resolved.yaml").write_text(yaml.safe_dump({"data": {"json": str(synth_dir / "sft.json")}}))
    assert eval_data_of(str(run / "hf"), None) == str(synth_dir)
    with pytest.raises(SystemExit, match="no synthetic held-out set eval_count.json under /nowhere"):
        eval_data_of(str(run / "hf"), "/nowhere")
