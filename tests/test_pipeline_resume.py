"""A Snakemake run killed in the middle of an SFT job continues from its checkpoint when re-run, and
ends with what an uninterrupted run of the same config gives."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SFT = Path("runs/smoke/sft/dualspeed/divprune/p0.9/r0.1/s0")
LOSS_COLUMNS = ("step", "mode", "loss", "teacher_ce", "student_ce", "kl", "visual_tokens", "text_tokens", "samples")
OVERLAY = "standins:\n  llm: {train: {max_steps: 20}}\n  clip: {train: {epochs: 1}}\nsft:\n  train: {max_steps: 40, save_steps: 5}\n"


def losses(run_dir):
    import csv

    with open(run_dir / "steps.csv") as f:
        return [tuple(r[k] for k in LOSS_COLUMNS) for r in csv.DictReader(f)]


def weights(hf):
    return {f"{f.name}:{k}": v for f in sorted(hf.glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.mark.timeout(1800)
def test_killed_pipeline_resumes_to_the_uninterrupted_result(tmp_path, workflow_copy):
    work = workflow_copy
    (work / "config" / "resume.yaml").write_text(OVERLAY)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "DUALSPEED_CACHE": str(tmp_path / "cache"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", str(SFT / "timing.json"), "--cores", "1", "--configfile",
           "config/smoke.yaml", "config/resume.yaml"]
    # its own process group, so the kill takes Snakemake and the training job with it, as a
    # preempted allocation would
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    first = work / SFT / "checkpoints" / "checkpoint-5" / "trainer_state.json"
    deadline = time.time() + 600
    while not first.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.is_file(), "the SFT job never wrote its first checkpoint"
    assert not (work / SFT / "timing.json").exists(), "the job finished before it could be killed"
    killed_rows = len(losses(work / SFT))
    subprocess.run([*cmd, "--unlock"], cwd=work, env=env, check=True, capture_output=True)
    res = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    timing = json.loads((work / SFT / "timing.json").read_text())
    assert timing["resumed_from"] and timing["steps"] == 40, timing
    # the same SFT config, uninterrupted, in another directory
    cfg = (work / SFT / "config.resolved.yaml").read_text().replace(str(SFT), "runs/whole")
    (work / "whole.yaml").write_text(cfg)
    subprocess.run([sys.executable, "-m", "dualspeed.train", "--config", "whole.yaml"], cwd=work, env=env, check=True,
                   capture_output=True, timeout=900)
    assert losses(work / SFT) == losses(work / "runs" / "whole"), f"killed after {killed_rows} logged steps"
    a, b = weights(work / SFT / "hf"), weights(work / "runs" / "whole" / "hf")
    assert a.keys() == b.keys()
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), f"max weight difference {diff}"
