import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from dualspeed.config import ConfigError, load_config
from dualspeed.models.build import build_tiny
from dualspeed.models.checkpoint import load_trainable, save_trainable
from dualspeed.models.llava import DualSpeedLlava
from dualspeed.train.freeze import set_trainable
from dualspeed.train.run import run


def tiny_cfg(synth_dir, out, **over):
    base = {
        "output_dir": str(out),
        "model": {"source": "tiny", "tokenizer": str(synth_dir / "tokenizer")},
        "data": {"json": str(synth_dir / "sft.json"), "image_folder": str(synth_dir)},
        "train": {"stage": "sft", "llm": "lora", "lora": {"r": 8, "alpha": 16}, "lr": 3e-3, "projector_lr": 1e-3,
                  "isolator_lr": 1e-3, "batch_size": 8, "max_steps": 6, "warmup_ratio": 0.0, "scheduler": "constant",
                  "save_steps": 1000, "logging_steps": 1},
        "fastslow": {"prune": True, "method": "divprune", "ratio": 0.9, "slow_prob": 0.5},
    }
    overrides = [f"{k}={v}" for k, v in over.items()]
    return load_config(base=base, overrides=overrides)


def read_steps(out):
    with open(out / "steps.csv") as f:
        return list(csv.DictReader(f))


def test_dualspeed_run_lowers_loss_and_logs_modes(synth_dir, tmp_path):
    out = tmp_path / "run"
    timing = run(tiny_cfg(synth_dir, out, **{"train.max_steps": 40, "fastslow.slow_prob": 0.3}))
    rows = read_steps(out)
    assert len(rows) == 40
    modes = {r["mode"] for r in rows}
    assert modes == {"fast", "slow"}
    slow = [r for r in rows if r["mode"] == "slow"]
    assert all(float(r["kl"]) >= 0 and r["teacher_ce"] != "nan" and r["student_ce"] != "nan" for r in slow)
    fast = [r for r in rows if r["mode"] == "fast"]
    assert all(int(r["visual_tokens"]) % 10 == 0 for r in fast)  # (k=6) + (l=4) per image
    first = sum(float(r["loss"]) for r in rows[:5]) / 5
    last = sum(float(r["loss"]) for r in rows[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert timing["mode_steps"]["fast"] + timing["mode_steps"]["slow"] == 40
    for name in ("config.resolved.yaml", "provenance.json", "timing.json", "hf/config.json", "hf/dualspeed_extra.safetensors"):
        assert (out / name).is_file(), name
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["packages"]["torch"] and prov["git"]["commit"]


def test_baseline_and_naiveprune_are_settings_of_the_same_loop(synth_dir, tmp_path):
    run(tiny_cfg(synth_dir, tmp_path / "base", **{"fastslow.prune": "false", "train.max_steps": 2}))
    run(tiny_cfg(synth_dir, tmp_path / "naive", **{"fastslow.slow_prob": 0, "fastslow.isolator": "false",
                                                    "train.max_steps": 2}))
    assert {r["mode"] for r in read_steps(tmp_path / "base")} == {"full"}
    naive = read_steps(tmp_path / "naive")
    assert {r["mode"] for r in naive} == {"fast"}
    assert all(int(r["visual_tokens"]) % 6 == 0 and r["kl"] == "nan" for r in naive)


def test_checkpoint_round_trip_restores_isolator_lora_projector(synth_dir, tokenizer, tmp_path):
    cfg = tiny_cfg(synth_dir, tmp_path)

    def fresh():
        m = DualSpeedLlava(build_tiny(cfg.model.tiny, tokenizer, seed=0), 4)
        set_trainable(m, cfg)
        return m

    a = fresh()
    with torch.no_grad():
        for p in a.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    save_trainable(a, tmp_path / "ckpt", {"stage": "sft"})
    b = fresh()
    load_trainable(b, tmp_path / "ckpt")
    sa, sb = dict(a.named_parameters()), dict(b.named_parameters())
    trained = [n for n, p in sa.items() if p.requires_grad]
    assert any("lora_A" in n for n in trained) and any("isolator" in n for n in trained)
    assert any("multi_modal_projector" in n for n in trained)
    for n in trained:
        assert torch.equal(sa[n], sb[n]), n


def test_resume_continues_exactly(synth_dir, tmp_path):
    full = tmp_path / "full"
    run(tiny_cfg(synth_dir, full, **{"train.save_steps": 3}))
    resumed = tmp_path / "resumed"
    run(tiny_cfg(synth_dir, resumed, **{"train.resume": str(full / "checkpoints" / "checkpoint-3")}))
    a = load_file(full / "checkpoints" / "checkpoint-6" / "trainable.safetensors")
    b_dir = resumed / "checkpoints" / "checkpoint-6"
    b = load_file(b_dir / "trainable.safetensors")
    assert "isolator.prompt" in a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert [r["mode"] for r in read_steps(full)][3:] == [r["mode"] for r in read_steps(resumed)]


def test_bad_config_names_the_key(synth_dir, tmp_path):
    with pytest.raises(ConfigError, match="fastslow.ratio"):
        tiny_cfg(synth_dir, tmp_path, **{"fastslow.ratio": 1.5})
    with pytest.raises(ConfigError, match="train.bogus"):
        tiny_cfg(synth_dir, tmp_path, **{"train.bogus": 1})
    with pytest.raises(ConfigError, match="fastslow.isolator"):
        tiny_cfg(synth_dir, tmp_path, **{"fastslow.isolator": "yes"})
    with pytest.raises(ConfigError, match="known VTP method"):
        tiny_cfg(synth_dir, tmp_path, **{"fastslow.method": "magic"})
