"""A number in a table can be trusted: stages hand over all they trained, a config gives the same
bytes twice, a killed run resumes to the same result, a NaN stops the run, exports are atomic."""
import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPImageProcessor

from dualspeed.models.build import build_tiny, tiny_image_processor
from dualspeed.models.checkpoint import EXTRA_FILE, export_hf
from dualspeed.config import TinyModelConfig, load_config
from dualspeed.models.isolator import ModeIsolator
from dualspeed.models.llava import DualSpeedLlava
from dualspeed.train.resume import FinishedRunError
from dualspeed.train.__main__ import parse_args
from dualspeed.train.run import run

LOSS_COLUMNS = ("step", "mode", "loss", "teacher_ce", "student_ce", "kl", "visual_tokens", "text_tokens", "samples")


def pretrain_cfg(synth_dir, out, **train):
    return load_config(base={
        "output_dir": str(out), "model": {"source": "tiny", "tokenizer": str(synth_dir / "tokenizer")},
        "data": {"json": str(synth_dir / "pretrain.json"), "image_folder": str(synth_dir), "template": "plain"},
        "train": {"stage": "pretrain", "llm": "frozen", "projector_lr": 1e-2, "isolator_lr": 1e-1, "batch_size": 8,
                  "max_steps": 3, "warmup_ratio": 0.0, "scheduler": "constant", **train},
        "fastslow": {"prune": True, "method": "divprune", "ratio": 0.9, "slow_prob": 0.0, "isolator": True}})


def sft_cfg(synth_dir, out, model_path, **train):
    return load_config(base={
        "output_dir": str(out), "model": {"source": "llava", "path": str(model_path)},
        "data": {"json": str(synth_dir / "sft.json"), "image_folder": str(synth_dir)},
        "train": {"stage": "sft", "llm": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.1}, "lr": 3e-3,
                  "projector_lr": 1e-3, "isolator_lr": 1e-2, "batch_size": 8, "max_steps": 6, "warmup_ratio": 0.0,
                  "scheduler": "constant", "save_steps": 3, **train},
        "fastslow": {"prune": True, "method": "random", "ratio": 0.9, "slow_prob": 0.5, "isolator": True}})


@pytest.fixture(scope="module")
def pretrained(synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pre")
    run(pretrain_cfg(synth_dir, out))
    return out / "hf"


def isolator(hf):
    return load_file(hf / EXTRA_FILE)["isolator.prompt"]


def loss_log(run_dir):
    with open(run_dir / "steps.csv") as f:
        return [tuple(r[k] for k in LOSS_COLUMNS) for r in csv.DictReader(f)]


def exported(run_dir):
    files = sorted((run_dir / "hf").glob("*.safetensors"))
    return {f"{f.name}:{k}": v for f in files for k, v in load_file(f).items()}


def test_sft_continues_from_the_isolator_pretraining_trained(synth_dir, pretrained, tmp_path):
    torch.manual_seed(0)  # what SFT (seed 0) would draw for an isolator of its own
    fresh = ModeIsolator(4, 128).prompt.detach()
    pre = isolator(pretrained)
    assert not torch.equal(pre, fresh)  # pretraining moved it away from an init
    frozen = tmp_path / "frozen"
    run(sft_cfg(synth_dir, frozen, pretrained, isolator_lr=0.0, max_steps=2))
    assert torch.equal(isolator(frozen / "hf"), pre)  # LR 0: SFT exports exactly what it was handed
    assert json.loads((frozen / "provenance.json").read_text())["carried_extras"] == ["isolator"]
    meta = json.loads((frozen / "hf" / "dualspeed.json").read_text())
    assert meta["trained_extras"] == ["isolator"] and meta["carried_from"] == str(pretrained)
    trained = tmp_path / "trained"
    run(sft_cfg(synth_dir, trained, pretrained, max_steps=2, save_steps=1))
    step1 = load_file(trained / "checkpoints" / "checkpoint-1" / "trainable.safetensors")["isolator.prompt"]
    # one small step from the pretrained isolator, not from a fresh one
    assert (step1 - pre).abs().max() < 0.05 < (step1 - fresh).abs().max()


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_one_config_twice_gives_the_same_bytes(synth_dir, pretrained, tmp_path, bf16):
    a, b = tmp_path / "a", tmp_path / "b"
    run(sft_cfg(synth_dir, a, pretrained, bf16=bf16))
    run(sft_cfg(synth_dir, b, pretrained, bf16=bf16))
    assert loss_log(a) == loss_log(b)
    assert {m for *_, m in [(r[1],) for r in loss_log(a)]} == {"fast", "slow"}
    ea, eb = exported(a), exported(b)
    assert ea.keys() == eb.keys() and all(torch.equal(ea[k], eb[k]) for k in ea)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_a_killed_run_resumes_to_the_uninterrupted_result(synth_dir, pretrained, tmp_path, bf16):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run(sft_cfg(synth_dir, whole, pretrained, bf16=bf16))
    run(sft_cfg(synth_dir, killed, pretrained, bf16=bf16))
    # what a kill after step 5 leaves: checkpoint-3, steps.csv rows 1-5, no export, no timing
    shutil.rmtree(killed / "checkpoints" / "checkpoint-6")
    shutil.rmtree(killed / "hf")
    (killed / "timing.json").unlink()
    rows = (killed / "steps.csv").read_text().splitlines()
    (killed / "steps.csv").write_text("\n".join(rows[:-1]) + "\n")
    timing = run(sft_cfg(synth_dir, killed, pretrained, bf16=bf16))
    assert timing["resumed_from"].endswith("checkpoint-3") and timing["steps"] == 6
    assert loss_log(killed) == loss_log(whole)  # rows 4-5 of the killed attempt are not repeated
    ew, ek = exported(whole), exported(killed)
    assert all(torch.equal(ew[k], ek[k]) for k in ew)


def test_changed_config_does_not_resume_stale_checkpoints(synth_dir, pretrained, tmp_path):
    out = tmp_path / "run"
    run(sft_cfg(synth_dir, out, pretrained, max_steps=3))
    (out / "timing.json").unlink()  # unfinished, as Snakemake leaves a job it reruns for a changed config
    timing = run(sft_cfg(synth_dir, out, pretrained, max_steps=3, lr=1e-3))
    assert timing["resumed_from"] is None and timing["steps"] == 3


def test_a_finished_run_of_another_config_is_refused_and_replaced_only_with_force(synth_dir, pretrained, tmp_path):
    out = tmp_path / "run"
    run(sft_cfg(synth_dir, out, pretrained, max_steps=3))
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    with pytest.raises(FinishedRunError, match=r"keys that differ: train\.lr, train\.max_steps.*--force"):
        run(sft_cfg(synth_dir, out, pretrained, max_steps=2, lr=1e-3))
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before  # nothing touched
    assert run(sft_cfg(synth_dir, out, pretrained, max_steps=3)) == json.loads((out / "timing.json").read_text())
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before  # already finished: kept
    timing = run(sft_cfg(synth_dir, out, pretrained, max_steps=2, lr=1e-3), force=True)
    assert timing["steps"] == 2 and timing["resumed_from"] is None
    assert len(loss_log(out)) == 2


def test_repeated_set_flags_all_apply_and_a_repeated_single_option_is_refused(capsys):
    args = parse_args(["--config", "a.yaml", "--set", "train.lr=1", "--set", "train.epochs=2", "data.json=x"])
    assert args.set == ["train.lr=1", "train.epochs=2", "data.json=x"]
    with pytest.raises(SystemExit):
        parse_args(["--config", "a.yaml", "--config", "b.yaml"])
    assert "--config was given twice ('a.yaml', then 'b.yaml')" in capsys.readouterr().err


def test_non_finite_loss_stops_the_run_naming_step_and_mode(synth_dir, tokenizer, tmp_path):
    m = DualSpeedLlava(build_tiny(TinyModelConfig(), tokenizer), 4)
    with torch.no_grad():
        m.llava.model.multi_modal_projector.linear_1.weight.fill_(float("nan"))
    export_hf(m, tokenizer, tiny_image_processor(32), tmp_path / "nan" / "hf", {"isolator_len": 4})
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"optimizer step 0 in (fast|slow) mode"):
        run(sft_cfg(synth_dir, out, tmp_path / "nan" / "hf"))
    note = json.loads((out / "nonfinite_loss.json").read_text())
    assert note["step"] == 0 and note["mode"] in ("fast", "slow")
    assert not (out / "hf").exists() and not (out / "timing.json").exists()


class _FailingProcessor(CLIPImageProcessor):
    """Fails the way a full disk or a kill would, halfway through an export (after the weights)."""

    def save_pretrained(self, *args, **kwargs):
        raise OSError("No space left on device")


def test_an_interrupted_export_is_never_read_as_finished(tiny_model, tokenizer, tmp_path):
    out = tmp_path / "hf"
    with pytest.raises(OSError):
        export_hf(tiny_model, tokenizer, _FailingProcessor(), out, {"isolator_len": 4})
    assert not out.exists()  # the weights written so far sit in hf.partial, which nothing reads
    export_hf(tiny_model, tokenizer, tiny_image_processor(32), out, {"isolator_len": 4})
    assert (out / "config.json").is_file() and not (tmp_path / "hf.partial").exists()


def test_two_ranks_draw_the_same_modes_and_end_with_the_same_weights(synth_dir, pretrained, tmp_path):
    spec = sft_cfg(synth_dir, tmp_path / "ddp", pretrained, max_steps=4, batch_size=4).to_dict()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dualspeed.train", "--spec", json.dumps(spec)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    timing = json.loads((tmp_path / "ddp" / "timing.json").read_text())
    assert timing["world_size"] == 2
    assert timing["ranks_agree"] == {"modes_checked_steps": 4, "weights": True}
    assert timing["samples"] == 4 * 4 * 2  # per-step counts are summed over both ranks
