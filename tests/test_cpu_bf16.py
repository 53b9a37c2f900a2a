"""bf16 on the CPU: autocast over fp32 master weights, attention in fp32, and the run stays deterministic."""
import pytest
import torch
from safetensors.torch import load_file

from dualspeed.train import cpu_bf16
from dualspeed.train.run import run
from test_trust import loss_log, sft_cfg


def test_attention_runs_in_fp32_under_cpu_autocast_and_returns_the_autocast_dtype():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    cpu_bf16.fp32_attention()
    cpu_bf16.fp32_attention()  # idempotent: wrapped once
    fn = ALL_ATTENTION_FUNCTIONS["sdpa"]
    assert getattr(fn, cpu_bf16._WRAPPED)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 10, 16, generator=g) for _ in range(3))
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups, module.training = True, 1, False
    plain, _ = fn(module, q, k, v, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = fn(module, q.bfloat16(), k.bfloat16(), v.bfloat16(), None)
    assert out.dtype == torch.bfloat16
    # the same kernel on the bf16-rounded inputs, computed in fp32: only the inputs' and output's rounding differ
    ref, _ = fn(module, q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(), None)
    assert torch.equal(out, ref.bfloat16())
    assert (out.float() - plain).abs().max() < 0.05


def test_a_bf16_run_keeps_fp32_master_weights_and_logs_its_precision(synth_dir, tmp_path):
    from test_trust import pretrain_cfg

    pre = tmp_path / "pre"
    run(pretrain_cfg(synth_dir, pre, bf16=True))
    out = tmp_path / "sft"
    run(sft_cfg(synth_dir, out, pre / "hf", bf16=True, max_steps=3))
    trained = load_file(out / "checkpoints" / "checkpoint-3" / "trainable.safetensors")
    assert trained and all(t.dtype == torch.float32 for t in trained.values())
    exported = {k: v for f in (out / "hf").glob("*.safetensors") for k, v in load_file(f).items()}
    assert all(t.dtype == torch.float32 for t in exported.values())
    fp32 = tmp_path / "fp32"
    run(sft_cfg(synth_dir, fp32, pre / "hf", max_steps=3))
    assert loss_log(out) != loss_log(fp32)  # autocast did change the arithmetic
