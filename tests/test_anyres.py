"""LLaVA-NeXT (anyres): per-crop pruning, the unpruned pack equal to transformers', training and export."""
import json

import pytest
import torch
from PIL import Image

from dualspeed import vtp
from dualspeed.config import TinyModelConfig
from dualspeed.data.dataset import Collator, LlavaDataset
from dualspeed.models.build import build_tiny, tiny_image_processor
from dualspeed.models.llava import DualSpeedLlava
from dualspeed.models.prune import Prune

CROP = 16  # tiny crops of 16 px at patch 4: 16 tokens per crop
PINPOINTS = [[16, 32], [32, 16], [32, 32]]
TOKENS_PER_CROP = (CROP // 4) ** 2


@pytest.fixture(scope="module")
def next_data(synth_dir, tmp_path_factory):
    """Two image samples of different crop counts (square 32x32 -> 2x2 grid + base = 5 crops; wide
    16x32 -> 1x2 grid + base = 3 crops) and a text-only sample."""
    d = tmp_path_factory.mktemp("next")
    rows = json.loads((synth_dir / "sft.json").read_text())
    img = [r for r in rows if "image" in r]
    txt = [r for r in rows if "image" not in r]
    for i, r in enumerate(img[:8]):
        im = Image.open(synth_dir / r["image"])
        (im if i % 2 == 0 else im.resize((32, 16))).save(d / f"{i}.png")  # PIL size is (width, height)
    samples = [dict(r, image=f"{i}.png") for i, r in enumerate(img[:8])] + txt[:2]
    (d / "sft.json").write_text(json.dumps(samples))
    return d


@pytest.fixture()
def next_model(tokenizer):
    return DualSpeedLlava(build_tiny(TinyModelConfig(image_size=CROP), tokenizer, seed=0, grid_pinpoints=PINPOINTS),
                          isolator_len=4).eval()


@pytest.fixture()
def next_batch(next_data, tokenizer):
    ds = LlavaDataset(next_data / "sft.json", next_data, tokenizer, tiny_image_processor(CROP, PINPOINTS))
    return Collator(tokenizer.pad_token_id)([ds[0], ds[1], ds[8]])  # square, wide, text-only


def test_batch_pads_crop_stacks_and_keeps_sizes(next_batch):
    assert next_batch["pixel_values"].shape[:2] == (2, 5)
    assert next_batch["image_sizes"].tolist() == [[32, 32], [16, 32]]
    assert next_batch["pixel_values"][1, 3:].abs().sum() == 0  # the wide image has 3 real crops


def test_unpruned_sequence_is_transformers_own_pack(next_model, next_batch):
    with torch.no_grad():
        ours = next_model.visual_tokens(next_batch["pixel_values"], next_batch["input_ids"],
                                        next_batch["attention_mask"], next_batch["labels"], next_batch["has_image"],
                                        prune=None, isolator=False, image_sizes=next_batch["image_sizes"])
        hf = next_model.llava.model.get_image_features(next_batch["pixel_values"], next_batch["image_sizes"])
    assert len(ours) == len(hf) == 2
    for a, b in zip(ours, hf):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # square: 5 crops' worth minus nothing unpadded, plus one newline per grid row (8 rows)
    assert ours[0].shape[0] == 5 * TOKENS_PER_CROP + 8


def test_each_crop_keeps_its_own_k(next_model, next_batch):
    p = 0.75
    k = vtp.keep_count(TOKENS_PER_CROP, p)
    with torch.no_grad():
        out = next_model(**next_batch, prune=Prune("divprune", p), isolator=True)
        naive = next_model(**next_batch, prune=Prune("divprune", p), isolator=False)
        seq = next_model.visual_tokens(next_batch["pixel_values"], next_batch["input_ids"],
                                       next_batch["attention_mask"], next_batch["labels"], next_batch["has_image"],
                                       prune=Prune("divprune", p), isolator=True, image_sizes=next_batch["image_sizes"])
        crops = [next_batch["pixel_values"][0, :5], next_batch["pixel_values"][1, :3]]
        feats = [next_model.encode_images(c) for c in crops]
    assert out.visual_tokens == (5 * k + 4) + (3 * k + 4)
    assert naive.visual_tokens == 5 * k + 3 * k
    plugin = vtp.get("divprune")
    for s, f in zip(seq, feats):
        assert torch.equal(s[:4], next_model.isolator.prompt)
        # an independent reference: prune every crop alone, concatenate base then grid crops
        ref = torch.cat([f[c, plugin(f[c:c + 1], k)[0]] for c in range(f.shape[0])])
        torch.testing.assert_close(s[4:], ref, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["cdpruner", "visionzip", "tome"])
def test_signal_and_merge_methods_reduce_each_crop_in_one_batched_call(next_model, next_batch, name):
    """Tower signals and instruction rows line up with the crops: each crop reduced alone gives the same tokens."""
    from dualspeed.models import signals

    k = vtp.keep_count(TOKENS_PER_CROP, 0.75)
    prune = Prune(name, 0.75)
    b = next_batch
    with torch.no_grad():
        seq = next_model.visual_tokens(b["pixel_values"], b["input_ids"], b["attention_mask"], b["labels"],
                                       b["has_image"], prune=prune, isolator=False, image_sizes=b["image_sizes"])
        for i, n_crops in enumerate([5, 3]):
            feats, sig = next_model.encode_images(b["pixel_values"][i, :n_crops], prune)
            text = signals.text_context(next_model.embed_tokens, next_model.image_token_id, b["input_ids"][i:i + 1],
                                        b["attention_mask"][i:i + 1], b["labels"][i:i + 1], b["has_image"][i:i + 1],
                                        [n_crops])
            ref = []
            for c in range(n_crops):
                one = {key: v[c:c + 1] for key, v in {**sig, **text}.items()}
                if "relevance" in prune.signals:  # the tiny model has no CLIP text tower: the LLM source
                    one["relevance"] = signals.llm_relevance(feats[c:c + 1], one["text_embeds"], one["text_mask"])
                ctx = vtp.VTPContext(**one)
                ref.append(prune.plugin.reduce(feats[c:c + 1], k, ctx).apply(feats[c:c + 1])[0])
            torch.testing.assert_close(seq[i], torch.cat(ref), rtol=1e-5, atol=1e-6)


def test_exported_checkpoint_runs_in_plain_transformers(next_model, next_batch, tokenizer, tmp_path):
    """Normal mode of our wrapper and LlavaNextForConditionalGeneration on the export give the same logits."""
    from transformers import LlavaNextForConditionalGeneration

    from dualspeed.models.checkpoint import export_hf

    export_hf(next_model, tokenizer, tiny_image_processor(CROP, PINPOINTS), tmp_path / "hf", {"isolator_len": 4})
    hf = LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    b = {k: v[:1] for k, v in next_batch.items()}
    with torch.no_grad():
        ours = next_model(**b, return_logits=True)
        n_vis = ours.visual_tokens
        ids = b["input_ids"][0, : int(b["attention_mask"][0].sum())]
        pos = int((ids == next_model.image_token_id).nonzero()[0])
        expanded = torch.cat([ids[:pos], ids.new_full((n_vis,), next_model.image_token_id), ids[pos + 1:]])[None]
        theirs = hf(input_ids=expanded, pixel_values=b["pixel_values"], image_sizes=b["image_sizes"]).logits
    torch.testing.assert_close(ours.logits[:, : expanded.shape[1]], theirs, rtol=1e-5, atol=1e-5)


def test_train_export_and_infer_a_tiny_llava_next(next_data, synth_dir, tmp_path):
    """DualSpeed SFT (fast and slow steps) on anyres data, then pruned and normal inference of the export."""
    from dualspeed.config import load_config
    from dualspeed.evaluation.predictor import Predictor, Query
    from dualspeed.train.run import run

    spec = {
        "output_dir": str(tmp_path / "run"),
        "model": {"source": "tiny", "tokenizer": str(synth_dir / "tokenizer"), "image_grid_pinpoints": PINPOINTS,
                  "tiny": {"image_size": CROP}},
        "data": {"json": str(next_data / "sft.json"), "image_folder": str(next_data), "template": "vicuna_v1",
                 "image_aspect_ratio": "anyres"},
        "train": {"stage": "sft", "llm": "lora", "lora": {"r": 4, "alpha": 8}, "batch_size": 5, "max_steps": 6,
                  "lr": 1e-3, "projector_lr": 1e-3, "isolator_lr": 1e-3, "save_steps": 100, "logging_steps": 1},
        "fastslow": {"method": "divprune", "ratio": 0.75, "slow_prob": 0.5},
    }
    timing = run(load_config(base=spec))
    assert timing["mode_steps"]["fast"] > 0 and timing["mode_steps"]["slow"] > 0
    cfg = json.loads((tmp_path / "run" / "hf" / "config.json").read_text())
    assert cfg["model_type"] == "llava_next" and cfg["image_grid_pinpoints"] == PINPOINTS
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["trainable_parameters"]["projector"] > 0
    q = [Query("What colour is the object?", next_data / "0.png"), Query("What colour is the object?", next_data / "1.png")]
    k = vtp.keep_count(TOKENS_PER_CROP, 0.75)
    stats = {}
    for mode in ("normal", "pruned", "pruned_noiso"):
        pred = Predictor(tmp_path / "run" / "hf", mode=mode, batch_size=2)
        assert len(pred.predict(q)) == 2
        stats[mode] = pred.summary()["visual_tokens_per_sample"]
    assert stats["pruned"] == ((5 * k + 4) + (3 * k + 4)) / 2
    assert stats["pruned_noiso"] == (5 * k + 3 * k) / 2
    assert stats["normal"] == ((5 * TOKENS_PER_CROP + 8) + (3 * TOKENS_PER_CROP + 4)) / 2  # packed, newlines


def test_pinpoints_that_are_not_whole_crops_are_refused(tokenizer):
    with pytest.raises(ValueError, match="image_grid_pinpoints.*multiples of the crop size 16"):
        build_tiny(TinyModelConfig(image_size=CROP), tokenizer, grid_pinpoints=[[16, 24]])


@pytest.mark.parametrize("pinpoints", [[], PINPOINTS])
def test_compose_builds_either_family_from_an_llm_and_a_clip(tokenizer, tmp_path, pinpoints):
    """source=compose (real recipes' stage 1) on small local stand-ins for Vicuna and CLIP: nothing is left
    on the meta device, the newline token is real, and the processor matches the family."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, LlavaNextImageProcessor

    from dualspeed.config import ModelConfig
    from dualspeed.models.build import load_components

    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    llm.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     image_size=CROP, patch_size=4)).save_pretrained(tmp_path / "clip")
    tiny_image_processor(CROP).save_pretrained(tmp_path / "clip")
    cfg = ModelConfig(source="compose", llm=str(tmp_path / "llm"), vision_tower=str(tmp_path / "clip"),
                      image_grid_pinpoints=pinpoints)
    llava, tok, proc = load_components(cfg)
    assert not any(p.is_meta for p in llava.parameters())
    assert llava.config.model_type == ("llava_next" if pinpoints else "llava")
    assert isinstance(proc, LlavaNextImageProcessor) == bool(pinpoints)
    if pinpoints:
        assert llava.model.image_newline.abs().sum() > 0
    model = DualSpeedLlava(llava).eval()
    ids = torch.tensor([[tok.bos_token_id, model.image_token_id, 5, 6, 7]])
    labels = torch.tensor([[-100, -100, -100, 6, 7]])
    side = 2 * CROP if pinpoints else CROP
    from dualspeed.data.images import process_image, stack_images

    images = stack_images([process_image(Image.new("RGB", (side, side), "red"), proc)])
    with torch.no_grad():
        out = model(ids, torch.ones_like(ids), labels, has_image=torch.tensor([True]), **images)
    assert torch.isfinite(out.ce)

    bad = ModelConfig(source="compose", llm=str(tmp_path / "llm"), vision_tower=str(tmp_path / "clip"),
                      image_grid_pinpoints=[[CROP, CROP + 1]])
    with pytest.raises(ValueError, match="image_grid_pinpoints"):
        load_components(bad)
