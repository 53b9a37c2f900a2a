"""Your own data (data.kind local): a LLaVA-format data set from outside the pipeline, the checks that refuse bad
data before any training, an SFT-only grid from a llava-hf checkpoint, and the whole smoke grid on the digits of
tests/digits_data.py."""
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
import yaml

from digits_data import build
from test_pipeline import dry, smk

ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture()
def own(workflow_copy):
    """A workflow copy with the digits in own_data/, where config/smoke_own.yaml looks for them."""
    build(workflow_copy / "own_data", n_pretrain=40, n_sft=40, n_eval=8)
    return workflow_copy


def variant(work: Path, edit) -> list[str]:
    """config/smoke_own.yaml changed by `edit` (keys removed as well as set), as the last config file."""
    cfg = yaml.safe_load((work / "config" / "smoke_own.yaml").read_text())
    edit(cfg)
    (work / "config" / "variant.yaml").write_text(yaml.safe_dump(cfg))
    return ["--configfile", "config/smoke.yaml", "config/variant.yaml"]


def _set(path: str, value):
    def edit(cfg):
        *head, last = path.split(".")
        node = cfg
        for k in head:
            node = node[k]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return edit


@pytest.mark.parametrize("path,value,says", [
    ("data.image_folder", "own_data/nowhere", "config key 'data.image_folder' is 'own_data/nowhere': no such dir"),
    ("data.sft_json", "own_data/missing.json", "config key 'data.sft_json' is 'own_data/missing.json': no such file"),
    ("eval.tasks", ["digits", "no_such_task"], "config key 'eval.tasks' names ['no_such_task']"),
    ("eval.local_tasks.digits.image_folder", "own_data/gone",
     "config key 'eval.local_tasks.digits.image_folder' is 'own_data/gone': no such dir"),
    ("data.pretrain_json", None, "config key 'data.pretrain_json' is missing; model.source tiny"),
])
def test_bad_local_config_is_refused_at_plan_time_naming_the_key(own, path, value, says):
    edits = [_set(path, value)] + ([_set("data.pretrain_image_folder", None)] if path == "data.pretrain_json" else [])
    res = smk("-n", "--cores", "1", *variant(own, lambda c: [e(c) for e in edits]), cwd=own, check=False)
    assert res.returncode != 0 and says in res.stdout + res.stderr, res.stderr[-2000:]


def test_a_truncated_image_fails_the_first_job_naming_the_file_before_any_training(own):
    bad = own / "own_data" / "images" / "sft_00045.png"
    bad.write_bytes(bad.read_bytes()[:60])
    res = smk("--cores", "1", "--configfile", "config/smoke.yaml", "config/smoke_own.yaml", cwd=own, env=ENV,
              check=False, timeout=300)
    assert res.returncode != 0
    log = (own / "logs" / "smoke-own" / "prepare_local.log").read_text()
    assert "data.sft_json" in log and "sft_00045.png" in log and "image cannot be decoded" in log
    assert not (own / "runs").exists()  # no stand-in, no stage started


def test_sft_only_grid_from_a_llava_checkpoint_dry_run(own):
    """No pretraining data and a published checkpoint: every row's SFT starts from it, no pretraining or stand-in
    job; the per-stage table is still written (as not run), never silently dropped."""
    def sft_only(cfg):
        del cfg["data"]["pretrain_json"], cfg["data"]["pretrain_image_folder"], cfg["standins"]
        cfg["model"] = {"source": "llava", "path": "llava-hf/llava-1.5-7b-hf"}

    args = variant(own, sft_only)
    n = dry(*args, cwd=own)
    # baseline, naiveprune, fastslow, fastslow_iso, dualspeed, dualspeed_noiso, pmod, pdrop; not the per-stage
    # table's vtp_pretrain (VTP in a pretraining that does not run) nor its vtp_sft
    assert n["sft"] == 8 and n["evaluate"] == 8 and n["prepare_local"] == 1 and n["table"] == 9
    assert n["evaluate_pdrop"] == 2
    assert "pretrain" not in n and "standin" not in n
    res = smk("-n", "--forceall", "--cores", "1", *args, cwd=own)
    assert "SFT-only grid" in res.stderr and "per-stage table" in res.stderr


ROOT = Path(__file__).resolve().parents[1]
# where the default grid (config/config.yaml) writes: no other data may be planned into these
DEFAULT_FOLDERS = re.compile(r"runs/tiny/|logs/tiny/|benchmarks/tiny/|resources/synth\b|results/(tables|metrics|"
                             r"vtp_inference)/|paper_figures/(pareto|curves|speedup)\.")


def readme_overlay() -> str:
    """The README's own-data overlay, as written."""
    section = (ROOT / "README.md").read_text().split("## Your own data", 1)[1]
    return section.split("```yaml\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("named", [True, False], ids=["as-written", "without-recipe"])
def test_the_readmes_own_data_overlay_never_plans_a_write_into_the_defaults_folders(own, named):
    """Layered on config/config.yaml as the README says, the overlay that sets data and eval (and, or not, a recipe)
    plans every job - the data check, the stand-ins' data, runs, metrics, tables, figures, logs - in folders of its
    own: the default's data, runs and tables are never planned into (issue 33: its stand-in data was overwritten)."""
    alias = own / "data"  # the README's /data/...: links to the digits
    alias.mkdir()
    for name, target in {"pre.json": "pretrain.json", "img": "images", "sft.json": "sft.json",
                         "eval.json": "eval.json"}.items():
        (alias / name).symlink_to(own / "own_data" / target)
    overlay = readme_overlay()
    assert "recipe: mine" in overlay and "/data/sft.json" in overlay
    if not named:
        overlay = "\n".join(line for line in overlay.splitlines() if not line.startswith("recipe:"))
    (own / "my_data.yaml").write_text(overlay.replace("/data/", f"{alias}/"))
    res = smk("-n", "-p", "--forceall", "--cores", "2", "--configfile", "config/config.yaml", "my_data.yaml", cwd=own)
    out = res.stdout + res.stderr
    assert "prepare_local" in out and "Job stats" in out
    assert not DEFAULT_FOLDERS.search(out), DEFAULT_FOLDERS.search(out).group(0)
    name = "mine" if named else re.search(r"runs_dir: runs/(own-[\w.-]+-[0-9a-f]{8})", out).group(1)
    for folder in (f"runs/{name}/", f"results/{name}/tables/", f"paper_figures/{name}/", f"--out resources/{name}"):
        assert folder in out, folder
    assert "data differs from that of the default grid" in res.stderr
    # the default itself, and config/full.yaml (its rows over the same data), keep the default's folders
    assert "data differs" not in smk("-n", "--forceall", "--cores", "2", "--configfile",
                                                   "config/full.yaml", cwd=own).stderr


def test_an_sft_only_grid_from_a_missing_checkpoint_is_refused_at_plan_time(own):
    """model.path is checked before 48 jobs are planned around it, not by the first SFT job's OSError."""
    def missing(cfg):
        del cfg["data"]["pretrain_json"], cfg["data"]["pretrain_image_folder"], cfg["standins"]
        cfg["model"] = {"source": "llava", "path": "/no/such/dir"}

    res = smk("-n", "--cores", "1", *variant(own, missing), cwd=own, check=False)
    assert res.returncode != 0 and "Job stats" not in res.stdout + res.stderr
    assert "config key 'model.path' is '/no/such/dir': no such folder" in res.stdout + res.stderr, res.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 9 min on one shared core, about 5 on two
def test_own_data_smoke_grid_end_to_end(workflow_copy):
    """The whole smoke grid, tables and figures, on digits the test draws (28 px, "which digit is this?",
    caption-style pretraining text): the tokenizer knows every word, the LLM stand-in never saw an image token,
    the derived files stay out of the user's folder, and the baseline reads the digits above chance."""
    from dualspeed.report.collect import chance_bound

    work = workflow_copy
    build(work / "own_data")
    start = time.time()
    smk("--cores", os.environ.get("DUALSPEED_TEST_CORES", "2"), "--configfile", "config/smoke.yaml",
        "config/smoke_own.yaml", cwd=work, env=ENV, timeout=1700)
    print(f"own-data smoke grid: {time.time() - start:.0f} s")
    meta = json.loads((work / "resources" / "smoke-own" / "local_meta.json").read_text())
    assert meta["unknown_words"] == 0 and meta["vocabulary"] > 40 and meta["tasks"]["digits_mc"]["scoring"].startswith(
        "multiple choice")
    assert sorted(p.name for p in (work / "own_data").iterdir()) == ["eval.json", "eval_mc.json", "images",
                                                                     "pretrain.json", "sft.json"]
    saw = json.loads((work / "runs" / "smoke-own" / "standins" / "llm" / "timing.json").read_text())["saw"]
    # 300 captions, 300 conversations without their image, and 300 runs of the data's words twice
    assert saw["image_tokens"] == 0 and saw["documents"] == 900
    res = work / "results" / "smoke-own"
    base = json.loads((res / "metrics" / "baseline" / "none" / "p0" / "r0" / "s0" / "normal.json").read_text())
    print("baseline:", base["scores"])
    assert base["backend"] == "lmms_eval"
    assert base["scores"]["digits"] > chance_bound(10, 60) and base["scores"]["digits_mc"] > chance_bound(25, 60)
    for t in ("main", "mismatch", "ablation", "per_stage", "methods", "vtp_inference", "p_sweep", "r_sweep",
              "findings"):
        assert (res / "tables" / f"{t}.md").stat().st_size > 0
    assert "| digits " in (res / "tables" / "main.md").read_text()
    assert (work / "paper_figures" / "smoke-own" / "pareto.png").stat().st_size > 10_000


def test_local_tasks_score_as_the_synthetic_ones_and_bad_rows_are_named(tmp_path):
    import importlib.util

    from dualspeed.data.local_tasks import read_task

    def load(name):
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "dualspeed" / "data" /
                                                      "task_files" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    local, synth = load("local_utils"), load("synth_utils")
    doc = {"question": "q", "image": "x.png", "answer": "Seven"}
    for said in ("seven", " Seven. ", "seven!", "six"):
        assert local.process_results(doc, [said]) == synth.process_results(doc, [said])
    rows = tmp_path / "t.json"
    for bad, says in ([{"question": "q", "image": "a.png"}], "row #0: 'answer' must be a non-empty string"), \
            ([{"question": "q", "image": "a.png", "answer": "b", "choices": ["a", "c"]}], "not one of its choices"):
        rows.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=says):
            read_task("mine", rows, tmp_path)


def test_sft_only_per_stage_table_is_written_as_not_run():
    from dualspeed.report.tables import build as table

    cfg = yaml.safe_load((Path(__file__).parents[1] / "config" / "config.yaml").read_text())
    cfg["data"] = {"kind": "local", "sft_json": "x.json", "image_folder": "img"}
    cfg["model"] = {"source": "llava", "path": "llava-hf/llava-1.5-7b-hf"}
    df, caption = table(cfg, "per_stage")
    assert list(df["result"]) == ["not run"] * 4 and "SFT-only grid" in caption and "llava-1.5-7b-hf" in caption


def test_tasks_of_an_include_path_may_be_named_and_an_empty_one_is_refused(own):
    mine = own / "my_tasks"
    mine.mkdir()
    args = variant(own, lambda c: c["eval"].update(include_path="my_tasks", tasks=["digits", "my_vqa"]))
    res = smk("-n", "--cores", "1", *args, cwd=own, check=False)
    assert res.returncode != 0 and "config key 'eval.include_path' is 'my_tasks': no lmms-eval task YAML" in res.stdout + res.stderr
    (mine / "my_vqa.yaml").write_text("task: my_vqa\ndataset_path: json\n")
    res = smk("-n", "-p", "--forceall", "--cores", "1", *args, cwd=own)  # -p: the commands, with their task folders
    assert os.pathsep.join(["resources/smoke-own/lmms_tasks", "my_tasks"]) in res.stdout


def test_lint_is_clean_on_own_data(own):
    res = smk("--lint", "--configfile", "config/smoke.yaml", "config/smoke_own.yaml", cwd=own, check=False)
    assert "Congratulations, your workflow is in a good condition!" in res.stdout + res.stderr, res.stdout[-3000:]
