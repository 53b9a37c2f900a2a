"""The real LLaVA-1.5 recipe's first jobs, end to end, on small stand-ins in the real formats (tests/llava_layout.py):
config/llava15_7b.yaml itself, with only its models, data paths, sizes and hardware overridden, through the
rules it uses (compose -> pretraining -> SFT -> export -> lmms-eval evaluation). A Vicuna whose tokenizer ships
only tokenizer.model loads the slow SentencePiece path, as the 7B job will."""
import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from llava_layout import llava_data, tiny_clip, tiny_vicuna
from test_pipeline import dry, smk

ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
CPU = {"bf16": False, "tf32": False, "deepspeed": "", "dataloader_workers": 0, "report_to": "none",
       "global_batch_size": 4, "batch_size": 2, "logging_steps": 1}


def overlay(work: Path) -> list[str]:
    assets = work / "assets"
    data = llava_data(assets)
    cfg = {
        "recipe": "llava15-e2e", "runs_dir": "runs/llava15-e2e", "results_dir": "results/llava15-e2e",
        "figures_dir": "paper_figures/llava15-e2e",
        "data": {"kind": "local", "root": "resources/llava15-e2e",
                 **{k: data[k] for k in ("pretrain_json", "pretrain_image_folder", "sft_json", "image_folder")}},
        "model": {"llm": str(tiny_vicuna(assets / "vicuna")), "vision_tower": str(tiny_clip(assets / "clip"))},
        "pretrain": {"train": {**CPU, "max_steps": 3, "gradient_checkpointing": True}},
        "sft": {"train": {**CPU, "max_steps": 4, "gradient_checkpointing": True, "lora": {"r": 8, "alpha": 16, "dropout": 0.05}}},
        "grid": {"seeds": [0], "methods": ["divprune"], "p_sweep": [0.9], "r_sweep": [0.1]},
        "eval": {"tasks": ["colour"], "local_tasks": {"colour": {"json": data["eval_json"],
                                                                 "image_folder": data["eval_images"]}},
                 "batch_size": 2, "chance": {"colour": 0}},
        "threads": {"train": 1, "eval": 1},
        "resources": {"train": {"gpus": 0, "cpus": 1, "mem_mb": 4000, "runtime": 30},
                      "eval": {"gpus": 0, "cpus": 1, "mem_mb": 4000, "runtime": 30}},
    }
    (work / "config" / "e2e.yaml").write_text(yaml.safe_dump(cfg))
    return ["--configfile", "config/llava15_7b.yaml", "config/e2e.yaml"]


def metrics(work, variant):
    base = work / "results" / "llava15-e2e" / "metrics" / variant
    return sorted(str(p.relative_to(work)) for p in base.rglob("normal.json")) if base.exists() else []


TARGETS = ["results/llava15-e2e/metrics/baseline/none/p0/r0/s0/normal.json",
           "results/llava15-e2e/metrics/dualspeed/divprune/p0.9/r0.1/s0/normal.json"]


def test_real_recipe_plans_compose_pretrain_sft_and_lmms_eval(workflow_copy):
    n = dry(*TARGETS, *overlay(workflow_copy), cwd=workflow_copy)
    # baseline and DualSpeed: their own pretraining (full; DivPrune with the isolator), SFT, one evaluation each
    assert n == {"prepare_local": 1, "pretrain": 2, "sft": 2, "evaluate": 2}, n


@pytest.mark.slow
@pytest.mark.timeout(1200)  # 72 s on two free cores
def test_real_recipe_first_jobs_run_end_to_end(workflow_copy):
    work = workflow_copy
    args = overlay(work)
    smk(*TARGETS, "--cores", "2", *args, cwd=work, env=ENV, timeout=1150)
    runs = work / "runs" / "llava15-e2e"
    for stage in ("pretrain", "sft"):
        resolved = [yaml.safe_load(p.read_text()) for p in (runs / stage).rglob("config.resolved.yaml")]
        assert len(resolved) == 2
        for r in resolved:
            assert r["data"]["template"] == ("plain" if stage == "pretrain" else "vicuna_v1")
    # the export carries Vicuna's SentencePiece model, not a converted tokenizer.json: it reloads the same way
    hf = next((runs / "sft").rglob("hf/config.json")).parent
    assert (hf / "tokenizer.model").is_file() and not (hf / "tokenizer.json").exists()
    for t in TARGETS:
        m = json.loads((work / t).read_text())
        assert m["backend"] == "lmms_eval" and 0 <= m["scores"]["colour"] <= 100
