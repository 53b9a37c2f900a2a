import pytest
import torch

from dualspeed.bench.presets import PRESETS
from dualspeed.bench.step_time import divprune_cost, run
from dualspeed.vtp.divprune import DivPrune


def test_bench_times_five_variants_side_by_side():
    res = run("tiny", steps=2, burn_in=1, p_ratio=0.9, r=0.5, device="cpu", dtype=__import__("torch").float32)
    assert set(res["step_time_s"]) == {"baseline", "naiveprune", "dualspeed", "pmod", "pdrop"}
    assert set(res["mode_step_time_s"]) == {"full", "fast", "fast_isolator", "slow", "pmod", "pdrop"}
    assert res["pdrop"] == {"layers": [1, 2, 3], "lam": 0.5}  # PyramidDrop's quarters of the tiny 4-layer LLM
    assert res["pmod_ratios"] == [None, 0.75, __import__("pytest").approx(0.25), 0.15]  # PRD over the tiny recipe's 4 LLM layers
    assert res["speedup_vs_baseline"]["baseline"] == 1.0
    assert all(t > 0 for t in res["mode_step_time_s"].values())
    m = res["mode_step_time_s"]
    assert abs(res["step_time_s"]["dualspeed"] - (0.5 * m["fast_isolator"] + 0.5 * m["slow"])) < 1e-12
    assert res["visual_tokens_full"] == 64
    assert res["visual_tokens_fast"] == 6 and res["visual_tokens_fast_isolator"] == 6 + 4
    assert res["divprune_ms_per_batch"] > 0 and res["divprune_crops_per_batch"] == 32
    # the FLOPs model's limit: pruning 64 -> 6 tokens must leave a fast step far cheaper than a full one
    lim = res["compute_speedup"]
    assert lim["baseline"] == 1.0 and lim["naiveprune"] > lim["dualspeed"] > 1.0 and lim["pmod"] > 1.0
    assert lim["pdrop"] > 1.0
    assert all(abs(res["measured_over_limit"][k] - res["speedup_vs_baseline"][k] / lim[k]) < 1e-12 for k in lim)


def test_bench_llava_next_prunes_every_crop():
    res = run("tiny-next", steps=1, burn_in=0, p_ratio=0.9, r=0.5, device="cpu", dtype=__import__("torch").float32)
    # 5 crops of 64 tokens; unpruned they are packed with one newline per grid row (16 rows)
    assert res["visual_tokens_full"] == 5 * 64 + 16
    assert res["visual_tokens_fast"] == 5 * 6 and res["visual_tokens_fast_isolator"] == 5 * 6 + 4


def test_divprune_is_timed_at_the_benchmarks_own_p(monkeypatch):
    kept = []
    select = DivPrune.select
    monkeypatch.setattr(DivPrune, "select", lambda self, feats, k, ctx: kept.append(k) or select(self, feats, k, ctx))
    res = divprune_cost({**PRESETS["tiny"], "batch": 2}, "cpu", torch.float32, p_ratio=0.5, reps=1)
    assert set(kept) == {32} and res["divprune_crops_per_batch"] == 2  # 64 tokens at p = 0.5, not 0.9's 6


def test_precision_bench_times_both_precisions_and_their_shares_of_the_peaks():
    from dualspeed.bench.precision import run as precision

    res = precision(rounds=1, burn_in=0, batch_size=2, lora_r=4, text=8)
    assert set(res["cases"]) == {"sft", "pretrain"} and res["gemm_peak_gflops"]["bf16"] > 0
    for case in res["cases"].values():
        ms = case["step_ms"]
        assert ms["fp32"] > 0 and ms["bf16"] > 0
        assert case["bf16_over_fp32"] == pytest.approx(ms["bf16"] / ms["fp32"], abs=2e-3)
        assert 0 < case["share_of_fp32_peak"]["fp32"] < 1 and 0 < case["share_of_bf16_peak"]["bf16"] < 1
    # the LoRA step trains more than the frozen-LLM one: its FLOPs (the FLOPs model's) are larger
    assert res["cases"]["sft"]["gflop_per_step"] > res["cases"]["pretrain"]["gflop_per_step"]


def test_mask_bench_times_both_builders_and_leaves_the_broadcast_one_installed():
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    from dualspeed.bench.mask_cost import run as masks
    from dualspeed.models import causal_mask

    res = masks(rounds=1, burn_in=0, batch_size=2, lora_r=4, text=8)
    assert set(res["cases"]) == {"sft", "pretrain"}
    for case in res["cases"].values():
        ms = case["step_ms"]
        assert ms["vmap"] > 0 and ms["broadcast"] > 0
        # the ratio is of the unrounded times; the ms are rounded to 0.01 of a few ms
        assert case["broadcast_over_vmap"] == pytest.approx(ms["broadcast"] / ms["vmap"], abs=1e-2)
    assert hasattr(ALL_MASK_ATTENTION_FUNCTIONS["sdpa"], causal_mask._INSTALLED)
