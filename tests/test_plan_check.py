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
    ({"grid__bogus": 1}, "unknown config key 'grid.bogus'; allowed: the keys extra_seeded_variants, extra_seeds, method, methods, p, p_sweep, r, r_sweep"),
    ({"grid__method": "nosuch"}, "config key 'grid.method' is 'nosuch', not a registered VTP method; allowed: cdpruner, divprune"),
    ({"grid__methods": ["divprune", "nosuch"]}, "config key 'grid.methods' names unknown VTP method(s) ['nosuch']"),
    # a method's options, by its own spec, against the k = 6 of 64 tokens the tiny model keeps at p = 0.9
    ({"grid__method": "visionzip:dominant=7"}, "config key 'grid.method' is 'visionzip:dominant=7': VTP method "
                                               "'visionzip': dominant=7 dominant tokens do not fit in the k=6 tokens a "
                                               "crop keeps (p=0.9 of the 64 tokens per crop of model.tiny)"),
    ({"grid__method": "visionzip:dominant=5", "grid__p_sweep": [0.95]}, "config key 'grid.method' is "
                                               "'visionzip:dominant=5': VTP method 'visionzip': dominant=5 dominant "
                                               "tokens do not fit in the k=3 tokens a crop keeps (p=0.95"),
    ({"grid__methods": ["divprune", "visionzip:dominant=1.5"]}, "config key 'grid.methods' has "
                                               "'visionzip:dominant=1.5': VTP method 'visionzip' option dominant=1.5 "
                                               "is not a fraction of the kept tokens in (0, 1), or a whole count >= 1"),
    ({"grid__methods": ["cdpruner:sign=1"]}, "config key 'grid.methods' has 'cdpruner:sign=1': VTP method 'cdpruner' "
                                             "does not take options ['sign']; its options: negate: true, false or auto"),
    # the synthetic images' geometry comes from the model: the old keys name where it went
    ({"data__synth": {"image_size": 32}}, "unknown config key 'data.synth.image_size': the synthetic images take "
                                          "their image size from the model that reads them, model.tiny.image_size"),
    ({"eval__tasks": ["synth_nosuch"]}, "config key 'eval.tasks' names ['synth_nosuch'], not a local task (the "
                                        "synthetic data's, eval.local_tasks, eval.include_path) or a task of the "
                                        "installed lmms-eval; allowed: synth_colour"),
    ({"eval__tasks": ["gqa"], "eval__backend": "synthetic"}, "config key 'eval.tasks' names ['gqa'], not a task of "
                                                             "the synthetic evaluator; allowed: synth_colour"),
    # the model's checkpoints: what the source reads exists, what it ignores is refused (issue 33)
    ({"model__path": "/x"}, "config key 'model.path' is '/x' but model.source is tiny, which reads model.tiny (no "
                            "checkpoint) and would ignore it; remove model.path, or set model.source: llava"),
    ({"model__source": "llava", "model__path": "/no/such/dir"}, "config key 'model.path' is '/no/such/dir': no such "
                                                                "folder, and not a hub id (owner/name)"),
    ({"model__source": "llava"}, "config key 'model.path' is missing; model.source llava needs model.path"),
    ({"model__source": "compose", "model__llm": "lmsys/vicuna-7b-v1.5"}, "config key 'model.vision_tower' is "
                                                                         "missing; model.source compose needs"),
    ({"grid__method": "visionzip:dominant=0.5+dominant=0.6"}, "config key 'grid.method' is 'visionzip:dominant=0.5+"
                                                              "dominant=0.6': VTP option 'dominant' is given twice"),
    ({"grid__r": 0}, "config key 'grid.r' is 0; allowed: 0 < r < 1. r is DualSpeed's probability of a slow"),
    ({"grid__r_sweep": [0.1, 1.0]}, "config key 'grid.r_sweep' has 1; allowed: 0 < r < 1"),
    ({"model__tiny": {"image_size": 30, "patch_size": 4}}, "config key 'model.tiny.image_size' is 30, not a multiple "
                                                           "of model.tiny.patch_size (4): the tower reads whole "
                                                           "patches; allowed: e.g. 28 or 32"),
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
    bad = subprocess.run(smk + ["--config", "grid={method: 'visionzip:dominant=7'}"], cwd=ROOT, capture_output=True,
                         text=True, env=env, timeout=300)
    assert bad.returncode != 0 and "config key 'grid.method' is 'visionzip:dominant=7'" in bad.stdout + bad.stderr


def test_a_run_checks_its_method_as_the_plan_does_and_the_model_at_every_step():
    import torch

    from dualspeed import vtp
    from dualspeed.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="fastslow.method.*dominant=7 dominant tokens do not fit in the k=6"):
        load_config(overrides=["output_dir=x", "model.source=tiny", "model.tokenizer=t", "fastslow.method=visionzip:dominant=7"])
    load_config(overrides=["output_dir=x", "model.source=llava", "model.path=p", "fastslow.method=visionzip:dominant=7"])
    ctx = vtp.VTPContext(cls_attention=torch.rand(1, 64), keys=torch.randn(1, 64, 4))
    with pytest.raises(ValueError, match="dominant=7 dominant tokens do not fit in the k=6"):  # a loaded tower's N
        vtp.get("visionzip:dominant=7").reduce(torch.randn(1, 64, 8), 6, ctx)


def test_the_synthetic_images_take_the_models_geometry(tmp_path):
    from dualspeed.grid.recipe import synth_settings

    assert synth_settings(DEFAULT)["image_size"] == 32 and synth_settings(DEFAULT)["patch_size"] == 4
    assert synth_settings(with_(model__tiny={"image_size": 48, "patch_size": 8}))["image_size"] == 48
    nxt = with_(model__tiny={"image_size": 16}, model__image_grid_pinpoints=[[16, 32], [32, 16], [32, 32]])
    assert (synth_settings(nxt)["image_size"], synth_settings(nxt)["patch_size"]) == (32, 4)  # the base crop + 2x2 grid
    with pytest.raises(PlanError, match="'model.image_grid_pinpoints' is \\[\\[16, 32\\]\\]: the synthetic images are square"):
        check(with_(model__image_grid_pinpoints=[[16, 32]]), SCHEMA)
    # other images are other data: they go to a folder of their own, never the default's resources/synth
    smk = [sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "1", "resources/geom/synth_meta.json",
           "--forcerun", "synthesize", "--config", "model={tiny: {image_size: 48, patch_size: 8}}", "recipe=geom"]
    plan = subprocess.run(smk, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          timeout=300)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "--image-size 48" in plan.stdout and "--patch-size 8" in plan.stdout


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


def test_p_reaches_the_run_as_the_configs_number_not_as_its_path_read_back():
    """A path writes p with 6 digits (p0.123457); the run trains at the config's p all the same."""
    target = "runs/tiny/sft/dualspeed/divprune/p0.123457/r0.1/s0/timing.json"
    smk = [sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "1", target, "--forcerun", "sft",
           "--config", "grid={p: 0.1234567, p_sweep: [0.1234567]}"]
    plan = subprocess.run(smk, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          timeout=300)
    assert plan.returncode == 0, plan.stderr[-2000:]
    specs = [line for line in plan.stdout.splitlines() if "dualspeed.train --spec" in line and "/sft/" in line]
    assert len(specs) == 1 and '"ratio": 0.1234567' in specs[0], specs


@pytest.mark.parametrize("over, key", [({"pdrop__layers": [1, 4]}, "pdrop.layers"),  # the tiny LLM has 4 layers
                                       ({"pdrop__layers": [2, 1]}, "pdrop.layers"),
                                       ({"pdrop__layers": [0, 2]}, "pdrop.layers"),
                                       ({"pdrop__layers": []}, "pdrop.layers"),
                                       ({"pdrop__lam": 0}, "pdrop.lam"),
                                       ({"pdrop__lam": 1.5}, "pdrop.lam"),
                                       ({"pdrop__padding_side": "left"}, "pdrop.padding_side"),
                                       ({"pdrop__train": {"llm": "half"}}, "train.llm")])
def test_bad_pdrop_settings_are_refused_before_any_job(over, key):
    with pytest.raises(PlanError, match=key.replace(".", r"\.")) as e:
        check(with_(**over), SCHEMA)
    assert key in str(e.value).splitlines()[0]


def test_pdrop_layers_fit_the_smoke_llm_and_the_7b_recipes():
    smoke = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    cfg = with_(model__tiny={**DEFAULT["model"]["tiny"], **smoke["model"]["tiny"]}, pdrop=smoke["pdrop"])
    check(cfg, SCHEMA)
    with pytest.raises(PlanError, match="pdrop.layers"):  # the default's 1, 2, 3 do not fit a 2-layer LLM
        check(with_(model__tiny=cfg["model"]["tiny"]), SCHEMA)
    for name in ("llava15_7b", "llava_next_7b"):
        real = yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())
        assert real["pdrop"]["layers"] == [8, 16, 24] and real["pdrop"]["lam"] == 0.5


def test_a_model_folder_must_hold_a_checkpoint_and_a_hub_id_passes(tmp_path):
    empty = tmp_path / "ckpt"
    empty.mkdir()
    with pytest.raises(PlanError, match="the folder holds no config.json"):
        check(with_(model__source="llava", model__path=str(empty)), SCHEMA)
    (empty / "config.json").write_text("{}")
    assert check(with_(model__source="llava", model__path=str(empty)), SCHEMA)["model"]["path"] == str(empty)
    assert check(with_(model__source="llava", model__path="llava-hf/llava-1.5-7b-hf"), SCHEMA)


def test_a_grid_on_other_data_never_takes_the_defaults_folders():
    from dualspeed.grid.folders import committed_grids, own_folders

    grids = committed_grids(ROOT / "config")
    other = with_(data__synth={**DEFAULT["data"]["synth"], "n_sft": 10})
    cfg, note = own_folders(other, grids)
    name = cfg["recipe"]
    assert name.startswith("synth-") and note and "runs_dir: runs/" + name in note and "the default grid" in note
    assert (cfg["runs_dir"], cfg["results_dir"], cfg["figures_dir"], cfg["data"]["root"]) == (
        f"runs/{name}", f"results/{name}", f"paper_figures/{name}", f"resources/{name}")
    assert own_folders(with_(data__synth={**DEFAULT["data"]["synth"], "n_sft": 11}), grids)[0]["recipe"] != name
    # its own recipe names the folders it left at the default's
    assert own_folders(with_(data__synth={**DEFAULT["data"]["synth"], "n_sft": 10}, recipe="mine"), grids)[0][
        "results_dir"] == "results/mine"
    # every committed grid keeps its folders: the same data may share them (config/full.yaml adds rows to the
    # default's, smoke_next.yaml reads smoke.yaml's images), other data has folders of its own
    for label, g in grids.items():
        assert own_folders(g, grids) == (g, None), label
    # a recipe whose derived folder is the default's data folder is refused, naming the keys
    with pytest.raises(PlanError, match="config key 'data.root' is 'resources/synth', a folder of the default grid"):
        own_folders(with_(data__synth={**DEFAULT["data"]["synth"], "n_sft": 10}, recipe="synth"), grids)


def test_own_data_over_another_committed_grid_takes_none_of_its_folders():
    """An overlay on config/smoke.yaml keeps smoke's recipe and folders unless it names its own: they are derived."""
    from dualspeed.grid.folders import committed_grids, merge, own_folders

    grids = committed_grids(ROOT / "config")
    mine = merge(grids["config/smoke.yaml"], {"data": {"kind": "local", "sft_json": "/d/sft.json",
                                                       "image_folder": "/d/img", "pretrain_json": "/d/pre.json"}})
    cfg, note = own_folders(mine, grids)
    assert "config/smoke.yaml" in note and cfg["recipe"].startswith("own-d-")
    assert cfg["runs_dir"] == f"runs/{cfg['recipe']}" and cfg["data"]["root"] == f"resources/{cfg['recipe']}"


def test_every_committed_config_is_a_guarded_grid():
    from dualspeed.grid.folders import COMMITTED

    files = {f.name for f in (ROOT / "config").glob("*.yaml")} - {"config.yaml", "downloads.yaml"}
    assert files == {f for fs in COMMITTED.values() for f in fs}
