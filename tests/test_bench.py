from dualspeed.bench import run


def test_bench_times_three_variants_side_by_side():
    res = run("tiny", steps=2, burn_in=1, p_ratio=0.9, r=0.5, device="cpu", dtype=__import__("torch").float32)
    assert set(res["step_time_s"]) == {"baseline", "naiveprune", "dualspeed"}
    assert res["speedup_vs_baseline"]["baseline"] == 1.0
    assert all(t > 0 for t in res["step_time_s"].values())
    assert res["visual_tokens_fast"] == 6 + 4 and res["visual_tokens_full"] == 64
    assert res["divprune_ms_per_image"] > 0
