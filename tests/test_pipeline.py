"""The Snakemake pipeline: lint, validation, dry-run job counts, and one real end-to-end smoke run."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def smk(*args, cwd=ROOT, env=None, check=True, timeout=600):
    res = subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})})
    if check and res.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    return res


def job_counts(out: str) -> dict[str, int]:
    table = out.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


def dry(*args, **kw):
    # --forceall: count every job the target needs, whatever outputs this checkout already holds
    res = smk("-n", "--forceall", "--cores", "2", *args, **kw)
    return job_counts(res.stdout + res.stderr)


def test_lint_is_clean():
    res = smk("--lint", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Congratulations, your workflow is in a good condition!" in res.stdout + res.stderr


def test_default_grid_dry_run_counts():
    n = dry()
    # 10 distinct SFT rows (p-MoD's on the baseline's pretraining); the 5 rows the mismatch and ablation findings
    # read (baseline, naiveprune, fastslow, fastslow_iso, dualspeed) run 3 seeds, the other 5 one: 5 * 3 + 5, and
    # NaivePrune 4 more (grid.extra_seeds). Pretraining per seed: full, divprune with and without the isolator;
    # PyramidDrop's own at seed 0; NaivePrune's own (divprune without the isolator) at seeds 3-6
    assert n["sft"] == 5 * 3 + 5 + 4 and n["pretrain"] == 3 * 3 + 1 + 4 and n["standin"] == 2 and n["synthesize"] == 1
    assert n["evaluate"] == 24  # one job per checkpoint, every inference mode in it
    assert n["evaluate_pdrop"] == 2  # PyramidDrop's dropping inference: its row, and the baseline training-free
    assert "evaluate_vtp" not in n  # one method: the baseline's own pruned evaluation
    assert n["table"] == 9 and n["figure"] == 3  # the paper's 8 tables and the findings table


def test_full_grid_dry_run_counts():
    n = dry("--configfile", "config/full.yaml")
    # 21 distinct rows: the default's 10, DualSpeed with the 5 other methods, 3 more p and 3 more r; 3 seeds for
    # the 16 rows of main, mismatch, ablation, per-stage and the sweeps, one for the method rows: 16 * 3 + 5; and
    # NaivePrune's 8 more seeds (3-10: eleven, for its findings' +-8)
    assert n["sft"] == 16 * 3 + 5 + 8 and n["evaluate"] == 61 and n["evaluate_vtp"] == 5
    assert n["evaluate_pdrop"] == 3 + 1  # PyramidDrop's three seeds, and the baseline's first training-free
    # seed 0: full, divprune p0.9 with and without the isolator, the 5 other methods, p 0.5/0.75/0.95, PyramidDrop
    # (12); seeds 1 and 2: the same but the other methods (7 each); NaivePrune's at seeds 3-10
    assert n["pretrain"] == 26 + 8


def test_one_table_builds_only_its_runs():
    n = dry(f"{'results'}/tables/ablation.md")
    # baseline, naiveprune, fastslow, fastslow_iso, dualspeed on 3 seeds, naiveprune on 4 more; dualspeed_noiso on one
    assert n["sft"] == 5 * 3 + 4 + 1
    # full, divprune_p0.9_iso, divprune_p0.9_noiso per seed: shared, not duplicated; NaivePrune's at seeds 3-6
    assert n["pretrain"] == 3 * 3 + 4
    assert n["evaluate"] == 20 and n["table"] == 1 and "figure" not in n


def test_seeded_rows_of_the_smoke_grid():
    n = dry("--configfile", "config/smoke.yaml")
    # 11 rows at seed 0 (the 10 variants and r = 0.5); the mismatch table's 3 rows again at seed 1, each seed on
    # pretraining runs of its own (3 per seed, and PyramidDrop's at seed 0)
    assert n["sft"] == 11 + 3 and n["pretrain"] == 4 + 3 and n["evaluate"] == 14 and n["evaluate_pdrop"] == 2
    assert "evaluate_vtp" not in n  # its one method is the grid's: the baseline's own pruned evaluation


@pytest.mark.parametrize("recipe,downloads", [("llava15_7b", 8), ("llava_next_7b", 14)])
@pytest.mark.parametrize("profile", [False, True])
def test_real_recipe_dry_runs(profile, recipe, downloads):
    args = ["--configfile", f"config/{recipe}.yaml"]
    if profile:
        args += ["--profile", "slurm"]
    res = smk("-n", "--forceall", "--cores", "2", *args)
    n = job_counts(res.stdout + res.stderr)
    # LLaVA-NeXT: pretraining JSON + images, SFT JSON + 11 image archives
    assert n["download"] == downloads and n["sft"] == 18 and n["pretrain"] == 9 and n["evaluate"] == 18
    assert n["evaluate_pdrop"] == 2
    assert n["evaluate_vtp"] == 2
    assert "standin" not in n
    if profile:
        # GPU training jobs ask Slurm for the config's GPUs; a retry would get a longer runtime
        assert "gpu=8" in res.stdout or "gpu': 8" in res.stdout or "gpu: 8" in res.stdout


@pytest.mark.parametrize("override,key", [("grid: {p: 1.5}", "p"), ("eval: {batch_size: 0}", "batch_size"),
                                          ("sft: {train: {lr: -1}}", "lr"), ("bogus_key: 1", "bogus_key")])
def test_bad_config_fails_validation_naming_the_key(tmp_path, override, key):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(override + "\n")
    res = smk("-n", "--cores", "1", "--configfile", str(cfg), check=False)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "validat" in out.lower() and (f"['{key}']" in out or f"'{key}' was unexpected" in out)


def test_unknown_method_fails_before_any_job(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("grid:\n  methods: [divprune, no_such_pruner]\n")
    res = smk("-n", "--cores", "1", "--configfile", str(cfg), check=False)
    assert res.returncode != 0
    assert "no_such_pruner" in res.stdout + res.stderr and "divprune" in res.stdout + res.stderr


def test_fresh_clone_has_no_pipeline_outputs():
    tracked = subprocess.run(["git", "ls-files", "runs", "results", "paper_figures", "resources", "logs"], cwd=ROOT,
                             capture_output=True, text=True).stdout.split()
    assert tracked == [], f"pipeline outputs are committed where the pipeline writes: {tracked[:5]}"


PLUGIN = '''
import torch
from dualspeed.vtp.base import VTPMethod, VTPContext, register

@register("firstk")
class FirstK(VTPMethod):
    """Defined only in the test: keep the first k tokens."""
    def select(self, feats, k, ctx: VTPContext):
        return torch.arange(k, device=feats.device).expand(feats.shape[0], k)
'''


@pytest.mark.timeout(1800)  # the whole smoke grid: 6-15 min on 2 cores, more when the machine is shared
def test_smoke_pipeline_end_to_end_with_a_new_vtp_method(tmp_path, workflow_copy):
    """The smoke config runs for real, and a VTP method defined only here is trained, evaluated, tabulated."""
    work = workflow_copy
    plugin = tmp_path / "firstk.py"
    plugin.write_text(PLUGIN)
    # visionzip: a merge method reading the tower's CLS attention and keys, through the whole pipeline
    (work / "config" / "smoke_plus.yaml").write_text("grid:\n  methods: [divprune, firstk, visionzip]\n")
    env = {"DUALSPEED_VTP_PLUGINS": str(plugin), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    smk("--cores", "2", "--configfile", "config/smoke.yaml", "config/smoke_plus.yaml", cwd=work, env=env,
        timeout=1500)
    res = work / "results" / "smoke"
    methods = (res / "tables" / "methods.csv").read_text()
    assert "firstk" in methods and "divprune" in methods
    m = json.loads((res / "metrics" / "dualspeed" / "firstk" / "p0.9" / "r0.1" / "s0" / "pruned.json").read_text())
    assert m["vtp_method"] == "firstk" and m["visual_tokens_per_sample"] == 6 + 4
    assert json.loads((res / "metrics" / "dualspeed" / "firstk" / "p0.9" / "r0.1" / "s0" / "normal.json").read_text())[
        "visual_tokens_per_sample"] == 64
    zipped = json.loads((res / "metrics" / "dualspeed" / "visionzip" / "p0.9" / "r0.1" / "s0" / "pruned.json").read_text())
    assert zipped["vtp"]["kind"] == "merge" and zipped["visual_tokens_per_sample"] == 6 + 4
    # training-free: the baseline checkpoint pruned with each method, no isolator (it never trained one)
    free = json.loads((res / "vtp_inference" / "firstk" / "p0.9.json").read_text())
    assert free["vtp_method"] == "firstk" and free["visual_tokens_per_sample"] == 6 and not free["isolator"]
    rows = (res / "tables" / "vtp_inference.csv").read_text()
    assert all(m in rows for m in ("divprune", "firstk", "visionzip"))
    # seeds: the mismatch table's rows (baseline, NaivePrune, DualSpeed) run twice, each seed with its own
    # pretraining; their rows report a mean and an interval, the others a single seed
    for seed in (0, 1):
        for tag in ("full", "divprune_p0.9_noiso", "divprune_p0.9_iso"):
            assert (work / "runs" / "smoke" / "pretrain" / f"{tag}_s{seed}" / "hf").is_dir()
    assert not (work / "runs" / "smoke" / "sft" / "fastslow" / "divprune" / "p0.9" / "r0.1" / "s1").exists()
    # one evaluation job per checkpoint; a run without an isolator is pruned once, written for both pruned modes
    naive = res / "metrics" / "naiveprune" / "divprune" / "p0.9" / "r0" / "s1"
    alike = [json.loads((naive / f"{m}.json").read_text()) for m in ("pruned", "pruned_noiso")]
    assert alike[1]["same_as"] == "pruned" and alike[0]["scores"] == alike[1]["scores"] and "same_as" not in alike[0]
    mism = (res / "tables" / "mismatch.csv").read_text().splitlines()
    assert mism[0].split(",")[:3] == ["run", "seeds", "normal %"] and "normal % ±95" in mism[0]
    assert all(",0 1," in row for row in mism[1:])
    assert "±" in (res / "tables" / "main.md").read_text()
    findings = (res / "tables" / "findings.md").read_text()
    assert "training-inference mismatch" in findings and "| A > B " in findings
    assert re.search(r"\| (reproduced|not reproduced|inconclusive[^|]*) +\|", findings)
    for t in ("main", "mismatch", "ablation", "per_stage", "methods", "vtp_inference", "p_sweep", "r_sweep",
              "findings"):
        for ext in ("md", "csv", "tex"):
            assert (res / "tables" / f"{t}.{ext}").stat().st_size > 0
    figs = work / "paper_figures" / "smoke"
    for f in ("pareto", "curves", "speedup"):
        assert (figs / f"{f}.png").stat().st_size > 10_000 and (figs / f"{f}.pdf").is_file()
    run = work / "runs" / "smoke" / "sft" / "dualspeed" / "divprune" / "p0.9" / "r0.1" / "s0"
    for name in ("config.resolved.yaml", "provenance.json", "steps.csv", "timing.json"):
        assert (run / name).is_file()
    # the p-MoD comparison row: trained on the baseline's pretraining, exported with its routers
    assert "p-MoD" in (res / "tables" / "main.md").read_text()
    pmod_hf = work / "runs" / "smoke" / "sft" / "pmod" / "none" / "p0" / "r0" / "s0" / "hf"
    assert json.loads((pmod_hf / "dualspeed.json").read_text())["pmod"]["ratios"] == [None, 0.15]
    assert list((work / "logs" / "smoke" / "sft").rglob("*.log")) and list((work / "benchmarks").rglob("*.tsv"))
    smk("--configfile", "config/smoke.yaml", "config/smoke_plus.yaml", "--report", "report.html", cwd=work, env=env)
    html = (work / "report.html").read_text(errors="ignore")
    assert "pareto.png" in html and "ablation.md" in html


@pytest.mark.timeout(1800)
def test_smoke_llava_next_main_table_end_to_end(tmp_path, workflow_copy):
    """The anyres path through the whole pipeline: warm-up, pretraining and SFT of a tiny LLaVA-NeXT,
    evaluation in every mode, the main table - and nothing the table does not need."""
    work = workflow_copy
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cfg = ["--configfile", "config/smoke.yaml", "config/smoke_next.yaml"]
    smk("results/smoke-next/tables/main.md", "--cores", "2", *cfg, cwd=work, env=env, timeout=1500)
    res = work / "results" / "smoke-next"
    main = (res / "tables" / "main.md").read_text()
    assert "dualspeed (divprune, p=0.9 r=0.1)" in main and "LLaVA-NeXT-7B numbers" in main and "99.04" in main
    run = work / "runs" / "smoke-next" / "sft" / "dualspeed" / "divprune" / "p0.9" / "r0.1" / "s0"
    assert json.loads((run / "hf" / "config.json").read_text())["model_type"] == "llava_next"
    metrics = res / "metrics" / "dualspeed" / "divprune" / "p0.9" / "r0.1" / "s0"
    # 5 crops x 16 tokens: packed with 8 row newlines unpruned; each crop keeps floor(0.1 * 16) = 1 pruned
    assert json.loads((metrics / "normal.json").read_text())["visual_tokens_per_sample"] == 5 * 16 + 8
    assert json.loads((metrics / "pruned.json").read_text())["visual_tokens_per_sample"] == 5 * 1 + 4
    assert not (work / "runs" / "smoke-next" / "sft" / "dualspeed_noiso").exists()
    # PyramidDrop on anyres: its row trained and evaluated dense and dropping (the packed crops' tokens ranked)
    assert "PyramidDrop (no VTP)" in main
    drop = json.loads((res / "metrics" / "pdrop" / "none" / "p0" / "r0" / "s0" / "pdrop.json").read_text())
    assert drop["pdrop"] == {"layers": [1], "lam": 0.5} and drop["visual_tokens_per_sample"] == 5 * 16 + 8
