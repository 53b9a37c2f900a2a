"""The analytic FLOPs model against torch's own counter (FlopCounterMode), on the tiny model in every
mode and on a 7B-shaped LLaVA built on the meta device.

Attention runs eager here: on the CPU and on meta tensors SDPA's kernels are invisible to the counter
(CPU) or decompose into eager's products (meta), so the model is checked in its eager convention."""
import types

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dualspeed.models import flops
from dualspeed.models.build import build_tiny, llava_config
from dualspeed.config import RunConfig, TinyModelConfig
from dualspeed.modes import FAST, FULL, SLOW
from dualspeed.train.losses import mode_loss
from dualspeed.models.llava import DualSpeedLlava
from dualspeed.models.prune import Prune
from dualspeed.train.freeze import set_trainable
from dualspeed.train.step_flops import samples as step_samples

TOL = 0.01  # the issue asks for 5%; the model is exact up to the rotary embedding's one small product


def counted(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def tiny(tokenizer, llm: str, layers: int = 4, ckpt: bool = True, train_vision: bool = False, pmod: bool = False,
         pdrop: bool = False):
    model = DualSpeedLlava(build_tiny(TinyModelConfig(llm_layers=layers), tokenizer, seed=0), isolator_len=4)
    model.llava.set_attn_implementation("eager")
    if pmod:
        model.enable_pmod()
    if pdrop:  # the tiny recipe's split: drops after layers 1, 2 and 3 of 4
        model.enable_pdrop([1, 2, 3], 0.5)
    cfg = RunConfig()
    cfg.train.llm, cfg.train.lora.r, cfg.train.train_vision_tower = llm, 16, train_vision
    set_trainable(model, cfg)
    if ckpt:
        model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    setup = flops.Setup(llm=llm, lora_r=16, checkpointing=ckpt, train_vision=train_vision, attn="eager")
    return model.train(), setup


CASES = {  # name: (LLM training, mode of the trainer's loss, isolator, the model's mode)
    "sft_full": ("lora", FULL, False, "full"),
    "sft_fast": ("lora", FAST, False, "fast"),
    "sft_fast_isolator": ("lora", FAST, True, "fast_isolator"),
    "sft_slow": ("lora", SLOW, True, "slow"),
    "pretrain_fast_isolator": ("frozen", FAST, True, "fast_isolator"),
    "sft_pmod": ("lora", FULL, False, "pmod"),
    "warmup_full": ("full", FULL, False, "full"),
    "sft_pdrop": ("lora", FULL, False, "pdrop"),
    "pretrain_pdrop": ("frozen", FULL, False, "pdrop"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_tiny_training_step_matches_the_counter(case, tokenizer, batch):
    llm, mode, iso, model_mode = CASES[case]
    model, setup = tiny(tokenizer, llm, pmod=model_mode == "pmod", train_vision=case.startswith("warmup"),
                        pdrop=model_mode == "pdrop")
    prune = Prune("divprune", 0.9)
    got = counted(lambda: mode_loss(model, batch, mode, prune, iso).loss.backward())
    s = flops.Shape.from_hf(model.config)
    samples = step_samples(batch, [1] * int(batch["has_image"].sum()), [s.patches] * int(batch["has_image"].sum()))
    want = flops.train_step(s, setup, samples, model_mode, 0.9, 4, model.pmod.ratios if model.pmod else None,
                            pdrop=model.pdrop.meta() if model.pdrop else None).total
    # PyramidDrop's ranking is small beside its layers: leaving out its LoRA products cost 0.9%, under TOL
    assert abs(want - got) / got < (TOL if model_mode != "pdrop" else 1e-3), (case, want, got)
    if model_mode == "pmod":  # at least two MoD layers route before the last one
        assert sum(r is not None for r in model.pmod.ratios[:-1]) >= 2


def test_without_checkpointing_the_recompute_is_gone(tokenizer, batch):
    model, setup = tiny(tokenizer, "lora", ckpt=False)
    got = counted(lambda: mode_loss(model, batch, FULL, None, False).loss.backward())
    s = flops.Shape.from_hf(model.config)
    n = int(batch["has_image"].sum())
    f = flops.train_step(s, setup, step_samples(batch, [1] * n, [s.patches] * n), "full")
    assert f.recompute == 0 and abs(f.total - got) / got < TOL


def test_tiny_prefill_matches_the_counter_and_pmod_caches_fewer_tokens(tokenizer):
    model, _ = tiny(tokenizer, "frozen", ckpt=False, pmod=True)
    model.eval()
    s = flops.Shape.from_hf(model.config)
    from dualspeed.bench.pmod_measure import measure_prefill

    got = measure_prefill(model, text=40)
    for mode in ("normal", "pmod"):
        want = flops.prefill(s, flops.Sample(40, s.patches, 1), mode, pmod_ratios=model.pmod.ratios, attn="eager",
                             kv_bytes=4)
        assert abs(want["flops"] - got[mode]["flops"]) / got[mode]["flops"] < TOL, mode
        assert want["kv_cache_bytes"] == got[mode]["kv_cache_bytes"], mode
    assert got["pmod"]["kv_cache_bytes"] < got["normal"]["kv_cache_bytes"]


def _meta_llava_7b():
    from transformers import CLIPVisionConfig, LlamaConfig

    from dualspeed.bench.presets import CLIP_L_336, VICUNA_7B

    v, t = CLIP_L_336, VICUNA_7B
    vision = CLIPVisionConfig(hidden_size=v["vis_d"], intermediate_size=4 * v["vis_d"], num_hidden_layers=v["vis_layers"],
                              num_attention_heads=16, image_size=336, patch_size=14)
    text = LlamaConfig(vocab_size=t["vocab"], hidden_size=t["d"], intermediate_size=t["inter"],
                       num_hidden_layers=t["layers"], num_attention_heads=t["heads"], num_key_value_heads=t["heads"])
    cfg, cls = llava_config(vision, text, None, image_token_index=t["vocab"] - 1, vision_feature_layer=-2,
                            vision_feature_select_strategy="default")
    with torch.device("meta"):
        model = DualSpeedLlava(cls(cfg), isolator_len=4)
    model.llava.set_attn_implementation("eager")
    rope = model.language_model.rotary_emb
    hd = t["d"] // t["heads"]

    # Llama's rotary embedding switches autocast off for its device type, which fails for 'meta'; its one
    # tiny product (positions x frequencies) is outside the model, so empty cos/sin of the right shape do
    def meta_rope(self, x, pos):
        e = torch.empty(pos.shape[0], pos.shape[1], hd, device=x.device, dtype=x.dtype)
        return e, e

    rope.forward = types.MethodType(meta_rope, rope)
    return model


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_7b_shaped_llava_on_meta_matches_the_counter(mode):
    """The 7B SFT step (LoRA r 128, checkpointing) on meta tensors: no weights, no GPU. The model's
    forward splices with data-dependent indexing that meta tensors cannot run, so the step is composed
    from its pieces: tower, projector, DivPrune, the LLM over the spliced length, the LM head on answers."""
    model = _meta_llava_7b()
    cfg = RunConfig()
    set_trainable(model, cfg)  # LoRA r 128 on every linear layer, as the recipe
    model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    b, text, answer = 2, 100, 20
    s = flops.Shape.from_hf(model.config)

    def step():
        feats = model.encode_images(torch.empty(b, 3, 336, 336, device="meta"))
        if mode == "fast":
            feats = model.visual_sequence(feats, Prune("divprune", 0.9), isolator=False)
        emb = torch.cat([model.embed_tokens(torch.zeros(b, text, dtype=torch.long, device="meta")), feats], dim=1)
        hidden = model.language_model(inputs_embeds=emb, use_cache=False).last_hidden_state
        model.llava.lm_head(hidden[:, :answer]).sum().backward()

    got = counted(step)
    setup = flops.Setup(llm="lora", lora_r=128, checkpointing=True, attn="eager")
    want = flops.train_step(s, setup, [flops.Sample(text, s.patches, 1, answer)] * b, mode, 0.9).total
    assert abs(want - got) / got < TOL, (mode, want, got)


def test_a_run_records_the_flops_torch_counts_and_its_peak_memory(synth_dir, tmp_path, monkeypatch):
    """A short DualSpeed SFT run (fast and slow steps) under FlopCounterMode: the FLOPs it writes to
    timing.json agree with what torch counted over the whole run (its export's LoRA merge included)."""
    from dualspeed.train import run as train
    from test_train import tiny_cfg

    real = train.load_components

    def eager_components(*a, **kw):  # the counter cannot see the CPU's SDPA kernel
        llava, tok, proc = real(*a, **kw)
        llava.set_attn_implementation("eager")
        return llava, tok, proc

    monkeypatch.setattr(train, "load_components", eager_components)
    cfg = tiny_cfg(synth_dir, tmp_path / "run", **{"train.max_steps": 4, "fastslow.slow_prob": 0.5,
                                                     "train.gradient_checkpointing": True})
    with FlopCounterMode(display=False) as fc:
        timing = train.run(cfg)
    got = fc.get_total_flops()
    assert abs(timing["flops"] - got) / got < TOL, (timing["flops"], got)
    assert set(timing["mode_flops"]) == {"fast", "slow", "full"}
    assert all((timing["mode_flops"][m] > 0) == (timing["mode_steps"][m] > 0) for m in timing["mode_flops"])
    ran = {m for m, n in timing["mode_steps"].items() if n}
    assert set(timing["peak_memory_bytes"]) == ran and all(v > 50 * 2**20 for v in timing["peak_memory_bytes"].values())


def test_the_flops_report_reads_the_bench_presets_without_the_gpu_benchmark():
    """`python -m dualspeed.bench flops` takes its presets from dualspeed/bench/presets.py: a preset's FLOPs build no
    model and import neither the step-time benchmark nor the model it builds."""
    import json
    import subprocess
    import sys

    code = ("import json, sys\n"
            "from dualspeed.bench import flops_report\n"
            "res = flops_report.preset_report('7b-sft', 0.9)\n"
            "print(json.dumps({'speedup': res['compute_speedup'], 'modules': sorted(sys.modules)}))\n")
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    timeout=300).stdout)
    assert out["speedup"]["baseline"] == 1.0 and out["speedup"]["naiveprune"] > out["speedup"]["dualspeed"] > 1.0
    assert not {"dualspeed.bench.step_time", "dualspeed.bench.preset_model", "dualspeed.models.llava"} & set(out["modules"])


def test_tiny_pdrop_prefill_matches_the_counter_and_caches_fewer_tokens():
    """PyramidDrop's prefill (drops after layers 1, 2, 3 of 4, lam 0.5; the last prompt token ranks): FLOPs as
    torch counts them and the KV cache each stage leaves, against the analytic model."""
    from dualspeed.bench.pdrop_measure import measure_pdrop

    res = measure_pdrop(layers=4, text=40)
    got, want = res["measured"], res["analytic"]
    for mode in ("normal", "pdrop"):
        assert abs(want[mode]["flops"] - got[mode]["flops"]) / got[mode]["flops"] < 1e-3, mode
        assert want[mode]["kv_cache_bytes"] == got[mode]["kv_cache_bytes"], mode
    n = got["normal"]["kv_tokens"][0] - 40  # the image's visual tokens
    assert [t - 40 for t in got["pdrop"]["kv_tokens"]] == [n, n // 2, n // 4, n // 8]
