"""The settings that make the real recipes follow the reference (docs/recipes.md), each on the tiny model."""
import csv
import json

import pytest
import torch
from PIL import Image

from dualspeed.models.build import tiny_image_processor
from dualspeed.config import ConfigError, load_config
from dualspeed.data.conversation import IGNORE, build_prompt, image_first
from dualspeed.data.dataset import Collator, LlavaDataset
from dualspeed.data.images import expand_to_square, process_image
from dualspeed.data.samples import DataError
from dualspeed.models.isolator import ModeIsolator
from dualspeed.modes import SLOW
from dualspeed.train.losses import align_answers, distill_kl, mode_loss
from dualspeed.data.sampler import GlobalBatchSampler, modality_grouped


# -- 1. images: pad to a square on the mean colour ------------------------------------------------
def test_pad_to_square_keeps_the_sides_and_fills_with_the_mean_colour():
    proc = tiny_image_processor(32)
    wide = Image.new("RGB", (64, 32), (255, 0, 0))
    square = expand_to_square(wide, (10, 20, 30))
    assert square.size == (64, 64)
    assert square.getpixel((0, 0)) == (10, 20, 30) and square.getpixel((32, 32)) == (255, 0, 0)
    padded = process_image(wide, proc, "pad")["pixel_values"]  # [3, 32, 32]
    cropped = process_image(wide, proc, "crop")["pixel_values"]
    assert padded.shape == cropped.shape == (3, 32, 32)
    mean, std = torch.tensor(proc.image_mean), torch.tensor(proc.image_std)
    fill = (torch.tensor([int(m * 255) for m in proc.image_mean]) / 255 - mean) / std
    red = (torch.tensor([1.0, 0.0, 0.0]) - mean) / std
    torch.testing.assert_close(padded[:, 0, 16], fill, atol=0.02, rtol=0)  # top band: the mean colour
    torch.testing.assert_close(padded[:, 16, 16], red, atol=0.02, rtol=0)
    torch.testing.assert_close(cropped[:, 0, 16], red, atol=0.02, rtol=0)  # the crop has no band: the sides are cut


def test_aspect_ratio_must_fit_the_model(synth_dir, tokenizer):
    with pytest.raises(DataError, match="image_aspect_ratio is 'anyres'.*single-crop"):
        LlavaDataset(synth_dir / "sft.json", synth_dir, tokenizer, tiny_image_processor(32), image_aspect_ratio="anyres")
    with pytest.raises(ConfigError, match="data.image_aspect_ratio"):
        load_config(base={"output_dir": "x", "model": {"source": "tiny", "tokenizer": "t",
                                                        "image_grid_pinpoints": [[32, 64]]}})


def test_evaluation_preprocesses_images_as_training_did(synth_dir, tokenizer, tmp_path):
    """The export records the stage's image_aspect_ratio; the predictor pads a wide image exactly as training."""
    from dualspeed.evaluation.predictor import Predictor, Query
    from dualspeed.train.run import run

    wide = tmp_path / "wide.png"
    Image.new("RGB", (48, 24), (0, 200, 0)).save(wide)
    out = tmp_path / "run"
    run(load_config(base={
        "output_dir": str(out), "model": {"source": "tiny", "tokenizer": str(synth_dir / "tokenizer")},
        "data": {"json": str(synth_dir / "sft.json"), "image_folder": str(synth_dir)},
        "train": {"stage": "sft", "llm": "frozen", "batch_size": 4, "max_steps": 1, "save_steps": 100},
        "fastslow": {"prune": False}}))
    pred = Predictor(out / "hf")
    assert pred.image_aspect_ratio == "pad"
    _, pix = pred._encode(Query("what colour is the object ?", wide))
    proc = tiny_image_processor(32)
    torch.testing.assert_close(pix["pixel_values"], process_image(Image.open(wide), proc, "pad")["pixel_values"])
    assert not torch.allclose(pix["pixel_values"], process_image(Image.open(wide), proc, "crop")["pixel_values"])


# -- 3. SFT batches grouped by modality and length -------------------------------------------------
def test_grouped_sampler_never_mixes_modalities_and_sorts_each_megabatch():
    g = torch.Generator().manual_seed(0)
    lengths = [int(x) for x in torch.randint(1, 50, (70,), generator=g)] + [-int(x) for x in torch.randint(1, 50, (23,), generator=g)]
    batch, chunks = 4, 2
    mega = batch * chunks  # one global batch: per-device batch x processes x accumulation steps

    def sampler():
        return GlobalBatchSampler(len(lengths), mega, batch, seed=3, lengths=lengths)

    whole = list(sampler())
    assert len(whole) == 96 and whole[93:] == sorted(whole[:8])[:3]  # the last global batch filled from the first
    order = whole[:93]
    assert sorted(order) == list(range(len(lengths)))
    assert whole == list(sampler())  # a function of (seed, epoch)
    s = sampler()
    s.set_epoch(1)
    assert list(s) != whole
    n_full = 70 // mega + 23 // mega - (70 % mega == 0) - (23 % mega == 0)  # each modality's last one goes to the tail
    for m in range(n_full):
        mb = order[m * mega:(m + 1) * mega]
        signs = {lengths[i] > 0 for i in mb}
        assert len(signs) == 1, f"megabatch {m} mixes modalities"
        for c in range(chunks):  # each device's batch: longest first
            lens = [abs(lengths[i]) for i in mb[c * batch:(c + 1) * batch]]
            assert lens == sorted(lens, reverse=True)
    tail = order[n_full * mega:]
    assert tail == sorted(tail)  # the reference's last group: both modalities' leftovers, in index order
    assert len(modality_grouped([5] * 9, 4, 1, torch.Generator().manual_seed(0))) == 9


def test_trainer_batches_one_modality_per_step(synth_dir, tmp_path):
    from dualspeed.train.run import run

    rows = json.loads((synth_dir / "sft.json").read_text())
    n_img = sum("image" in r for r in rows)
    out = tmp_path / "run"
    run(load_config(base={
        "output_dir": str(out), "model": {"source": "tiny", "tokenizer": str(synth_dir / "tokenizer")},
        "data": {"json": str(synth_dir / "sft.json"), "image_folder": str(synth_dir)},
        # LoRA: a text-only batch has nothing for the projector alone to learn from
        "train": {"stage": "sft", "llm": "lora", "lora": {"r": 2, "alpha": 4}, "batch_size": 8,
                  "max_steps": n_img // 8 - 1, "save_steps": 100,
                  "logging_steps": 1, "group_by_modality_length": True},
        "fastslow": {"prune": False}}))
    with open(out / "steps.csv") as f:
        visual = [int(r["visual_tokens"]) for r in csv.DictReader(f)]
    assert set(visual) == {0, 8 * 64}, visual  # every step all text-only or all image samples, and both occur


# -- 4. the plain template's end; 5. image placement ----------------------------------------------
def test_plain_caption_ends_in_newline_or_eos(tokenizer):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    conv = [{"from": "human", "value": "<image>\nignored"}, {"from": "gpt", "value": "a red object"}]
    ids, labels = build_prompt(tokenizer, conv, "plain", plain_end="eos")
    assert ids[-1] == labels[-1] == tokenizer.eos_token_id
    # a byte-level tokenizer, as Llama's, has a newline token: the caption's target ends in it
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    bpe.train_from_iterator(["a red object\n", "a blue object"], trainers.BpeTrainer(
        special_tokens=["<s>", "</s>", "<image>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    byte_tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                       additional_special_tokens=["<image>"])
    ids, labels = build_prompt(byte_tok, conv, "plain", plain_end="newline")
    answer = [t for t in labels if t != IGNORE]
    assert byte_tok.decode(answer) == "a red object\n" and byte_tok.eos_token_id not in ids
    with pytest.raises(ValueError, match="plain_end"):
        build_prompt(byte_tok, conv, "plain", plain_end="tab")


def test_image_moves_to_the_start_of_its_turn(synth_dir, tokenizer, tmp_path):
    conv = [{"from": "human", "value": "what colour is the object ?\n<image>"}, {"from": "gpt", "value": "red"}]
    assert image_first(conv)[0]["value"] == "<image>\nwhat colour is the object ?"
    assert image_first(conv)[1] == conv[1]
    row = next(r for r in json.loads((synth_dir / "sft.json").read_text()) if "image" in r)
    row["conversations"][0]["value"] = row["conversations"][0]["value"].replace("<image>\n", "") + " <image>"
    (tmp_path / "d.json").write_text(json.dumps([row]))
    moved = LlavaDataset(tmp_path / "d.json", synth_dir, tokenizer, tiny_image_processor(32))[0]["input_ids"]
    kept = LlavaDataset(tmp_path / "d.json", synth_dir, tokenizer, tiny_image_processor(32), image_first=False)[0]
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert int((moved == image_id).nonzero()) < int((kept["input_ids"] == image_id).nonzero())


# -- 6. tau^2; 7. isolator init -------------------------------------------------------------------
def test_kl_scales_with_tau_squared():
    s, t = torch.randn(5, 11), torch.randn(5, 11)
    plain = distill_kl(s, t, tau=2.0, tau_squared=False)
    torch.testing.assert_close(distill_kl(s, t, tau=2.0), 4.0 * plain)
    torch.testing.assert_close(distill_kl(s, t, tau=1.0), distill_kl(s, t, tau=1.0, tau_squared=False))


def test_isolator_init_is_the_reference_linear_weight_or_normal():
    torch.manual_seed(0)
    lin, nrm = ModeIsolator(4, 128, "linear").prompt, ModeIsolator(4, 128, "normal").prompt
    bound = 1 / 128 ** 0.5
    assert lin.abs().max() <= bound and abs(lin.std().item() - bound / 3 ** 0.5) < 0.01
    assert abs(nrm.std().item() - 0.02) < 0.004
    with pytest.raises(ValueError, match="isolator init"):
        ModeIsolator(4, 8, "zeros")


# -- 8. over-long samples: cut after splicing -----------------------------------------------------
def test_long_sample_is_cut_after_splicing_where_the_reference_cuts(tiny_model, batch):
    one = {k: (v[:1] if torch.is_tensor(v) else v) for k, v in batch.items()}
    n_text = int(one["attention_mask"].sum())
    spliced = n_text - 1 + 64  # the placeholder becomes 64 visual tokens
    full = tiny_model(**one, return_logits=True)
    n_ans = int(full.answer_counts[0])
    cut = spliced - 2  # drops the last two tokens: the final answer token and the end token
    tiny_model.max_length = cut
    short = tiny_model(**one, return_logits=True)
    assert short.labels.shape[1] == cut and int(short.answer_counts[0]) == n_ans - 2
    # causal attention: what is kept sees exactly what it saw before
    torch.testing.assert_close(short.answer_logits, full.answer_logits[: n_ans - 2], atol=1e-5, rtol=1e-5)
    assert torch.equal(short.targets, full.targets[: n_ans - 2])
    tiny_model.max_length = None


def test_distillation_compares_the_answer_tokens_both_kept(tiny_model, batch):
    """A cut full sequence keeps fewer answer tokens than its pruned teacher: the KL runs on the common prefix."""
    from dualspeed.models.prune import Prune

    tiny_model.max_length = int(batch["attention_mask"].sum(1).max()) - 1 + 64 - 2
    r = mode_loss(tiny_model, batch, SLOW, Prune("divprune", 0.9), isolator=True, tau=2.0)
    assert torch.isfinite(r.kl) and r.kl >= -1e-5  # KL >= 0 up to fp32 round-off (a near-empty common prefix gives ~0)
    tiny_model.max_length = None
    s, t = torch.arange(5.0)[:, None], torch.arange(7.0)[:, None]
    a, b = align_answers(s, torch.tensor([2, 3]), t, torch.tensor([3, 4]))
    assert a.flatten().tolist() == [0, 1, 2, 3, 4] and b.flatten().tolist() == [0, 1, 3, 4, 5]


def test_collated_text_is_cut_to_max_length_before_splicing(synth_dir, tokenizer):
    ds = LlavaDataset(synth_dir / "sft.json", synth_dir, tokenizer, tiny_image_processor(32), max_length=20)
    b = Collator(tokenizer.pad_token_id)([ds[0], ds[1]])
    assert b["input_ids"].shape[1] <= 20


# -- the recipes ------------------------------------------------------------------------------------
def test_real_recipes_choose_the_reference_settings():
    import yaml

    from dualspeed.grid.recipe import pretrain_spec, sft_spec
    from dualspeed.grid.variants import point

    def merged(path):
        cfg = yaml.safe_load(open("config/config.yaml"))
        for k, v in yaml.safe_load(open(path)).items():
            cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
        return cfg

    pt = point("dualspeed", "divprune", 0.9, 0.1)
    for path, sft_aspect, pre_aspect in (("config/llava15_7b.yaml", "pad", "crop"),
                                          ("config/llava_next_7b.yaml", "anyres", "anyres")):
        cfg = merged(path)
        pre, sft = pretrain_spec(cfg, pt), sft_spec(cfg, pt)
        assert (pre["data"]["image_aspect_ratio"], sft["data"]["image_aspect_ratio"]) == (pre_aspect, sft_aspect)
        assert pre["data"]["plain_end"] == "newline" and sft["data"]["truncate"] == "spliced"
        assert sft["train"]["group_by_modality_length"] and not pre["train"]["group_by_modality_length"]
        assert sft["train"]["max_grad_norm"] == pre["train"]["max_grad_norm"] == 0
        assert sft["fastslow"]["tau_squared"] and sft["fastslow"]["isolator_init"] == "linear"
