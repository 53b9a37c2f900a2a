"""CDPruner's relevance from a CLIP text tower: a tiny CLIPModel built from a config (no download) against a
plain per-image reference; which source ran, in provenance; a configured CLIP that is missing; the tiny default."""
import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dualspeed.config import ConfigError, ModelConfig
from dualspeed.data.conversation import build_prompt, image_first
from dualspeed.models.prune import Prune
from dualspeed.models import clip_text
from dualspeed.vtp.base import SOURCE_CLIP, SOURCE_LLM, VTPMethod, register
from dualspeed.vtp.cdpruner import normalise

WIDTH = 64  # the tiny LLaVA's vision width (TinyModelConfig.vision_hidden)


def write_char_tokenizer(path):
    """A CLIP BPE tokenizer with single characters and no merges: CLIP's own pre-tokenisation, no download."""
    from transformers import CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (path / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=77)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    d = tmp_path_factory.mktemp("tiny_clip")
    tok = write_char_tokenizer(d)
    bos, eos = tok.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"])
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=bos, eos_token_id=eos,
                         pad_token_id=eos),
        vision_config=dict(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=4),
        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def clip_ref(clip_dir):
    from transformers import CLIPModel, CLIPTokenizer

    return CLIPModel.from_pretrained(clip_dir).eval(), CLIPTokenizer.from_pretrained(clip_dir)


def reference(patches, post_layernorm, turns, clip_ref):
    """One crop, loops: CLIP's projection of each patch, each turn alone through CLIP's own text features
    (cut to 77 tokens, end token kept), cosine averaged over the turns; no turn -> zeros."""
    model, tok = clip_ref
    if not turns:
        return torch.zeros(patches.shape[0])
    img = F.normalize(model.visual_projection(post_layernorm(patches)), dim=-1)
    sims = []
    for t in turns:
        ids = tok(t).input_ids
        ids = ids[:76] + [ids[-1]] if len(ids) > 77 else ids
        txt = F.normalize(model.get_text_features(input_ids=torch.tensor([ids]))[0], dim=-1)
        sims.append(img @ txt)
    return torch.stack(sims).mean(0)


def prompt_batch(tokenizer, prompts):
    """Right-padded ids [I, T] and prompt mask [I, T] of (conversation, template) pairs, as the model sees them."""
    rows = [build_prompt(tokenizer, image_first(c), tpl, for_generation=True)[0] for c, tpl in prompts]
    n = max(map(len, rows))
    ids = torch.full((len(rows), n), tokenizer.pad_token_id)
    mask = torch.zeros(len(rows), n, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), True
    return ids, mask & (ids != tokenizer.convert_tokens_to_ids("<image>"))


def test_clip_relevance_over_crops_matches_per_crop_reference(clip_dir, clip_ref, tokenizer):
    """Three images of 2, 3 and 1 crops in one call: two user turns (the mean over them), a question longer
    than CLIP's 77 positions (cut), and the plain template's empty instruction (flat)."""
    from torch import nn

    q1, q2 = "What colour is the object ?", "How many objects are there ?"
    long_q = " ".join(["Where is the object ?"] * 6)  # > 77 character tokens
    prompts = [([{"from": "human", "value": "<image>\n" + q1}, {"from": "gpt", "value": "red"},
                 {"from": "human", "value": q2}, {"from": "gpt", "value": ""}], "vicuna_v1"),
               ([{"from": "human", "value": "<image>\n" + long_q}, {"from": "gpt", "value": ""}], "vicuna_v1"),
               ([{"from": "human", "value": "<image>"}, {"from": "gpt", "value": ""}], "plain")]
    ids, mask = prompt_batch(tokenizer, prompts)
    ln = nn.LayerNorm(WIDTH)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
    rng = torch.random.get_rng_state()
    clip = clip_text.ClipText.load(str(clip_dir)).bind(tokenizer, ln, WIDTH)
    assert torch.equal(rng, torch.random.get_rng_state())  # loading leaves a seeded run's random draws alone
    crops = [2, 3, 1]
    patches = torch.randn(sum(crops), 16, WIDTH, generator=torch.Generator().manual_seed(0))
    got = clip.relevance(patches, ids, mask, crops)
    assert torch.equal(got, clip.relevance(patches, ids, mask, crops))  # deterministic
    owners = [0, 0, 1, 1, 1, 2]
    turns = [[q1, q2], [long_q], []]
    assert len(clip_ref[1](long_q).input_ids) > 77
    with torch.no_grad():
        for c, i in enumerate(owners):
            torch.testing.assert_close(got[c], reference(patches[c], ln, turns[i], clip_ref), rtol=1e-5, atol=1e-5)
    assert got[5].abs().sum() == 0 and got[:5].std(1).min() > 0
    q = normalise(got, negate=True)
    assert q.min() >= 0 and q.max() <= 1 and torch.equal(q[5], torch.ones(16))


def test_clip_relevance_in_the_model_reuses_the_tower_pass(tiny_model, batch, tokenizer, synth_dir, clip_dir, clip_ref,
                                                           registry):
    """Through DualSpeedLlava: the relevance a method receives equals the reference computed per image from
    the tower's features and the sample's own question, and CDPruner runs on it in training and generation."""
    seen = {}

    @register("relevance_probe")
    class Probe(VTPMethod):
        signals = ("relevance",)

        def select(self, feats, k, ctx):
            seen["ctx"] = ctx
            return ctx.relevance.topk(k, dim=1).indices

    tiny_model.attach_clip_text(clip_text.ClipText.load(str(clip_dir)), tokenizer)
    with torch.no_grad():
        tiny_model(**batch, prune=Prune("relevance_probe", 0.9))
    ctx = seen["ctx"]
    assert ctx.relevance_source == SOURCE_CLIP and ctx.text_embeds is None  # only what is declared
    tower = tiny_model.llava.model.vision_tower
    rows = [r for r in json.loads((synth_dir / "sft.json").read_text()) if "image" in r][:3]  # the batch's
    with torch.no_grad():
        for i, pix in enumerate(batch["pixel_values"]):
            feats = tower(pix[None], output_hidden_states=True).hidden_states[-1][0, 1:]  # the tiny feature layer
            turns = [rows[i]["conversations"][0]["value"].replace("<image>", "").strip()]
            ref = reference(feats, tower.vision_model.post_layernorm, turns, clip_ref)
            torch.testing.assert_close(ctx.relevance[i], ref, rtol=1e-5, atol=1e-5)
    assert tiny_model.signal_sources(("relevance",)) == {"relevance": SOURCE_CLIP, "clip_text": str(clip_dir)}
    tiny_model.train()
    out = tiny_model(**batch, prune=Prune("cdpruner", 0.9), isolator=True)
    out.ce.backward()
    assert out.visual_tokens == int(batch["has_image"].sum()) * (6 + 4)


def run_cfg(synth_dir, out, **over):
    from dualspeed.config import load_config

    base = {"output_dir": str(out), "model": {"source": "tiny", "tokenizer": str(synth_dir / "tokenizer")},
            "data": {"json": str(synth_dir / "sft.json"), "image_folder": str(synth_dir)},
            "train": {"stage": "sft", "llm": "lora", "lora": {"r": 4, "alpha": 8}, "batch_size": 4, "max_steps": 1,
                      "warmup_ratio": 0.0, "scheduler": "constant", "save_steps": 1000, "logging_steps": 1},
            "fastslow": {"prune": True, "method": "cdpruner", "ratio": 0.9, "slow_prob": 0.0}}
    return load_config(base=base, overrides=[f"{k}={v}" for k, v in over.items()])


def test_source_is_recorded_in_training_export_and_evaluation(synth_dir, tmp_path, clip_dir):
    from dualspeed.evaluation.predictor import Predictor, Query
    from dualspeed.train.run import run

    run(run_cfg(synth_dir, tmp_path / "clip", **{"model.clip_text": str(clip_dir)}))
    vtp_info = json.loads((tmp_path / "clip" / "provenance.json").read_text())["vtp"]
    assert vtp_info["sources"] == {"relevance": "clip_text", "clip_text": str(clip_dir)}
    assert vtp_info["negate"] is True  # the published sign for the CLIP source
    hf = tmp_path / "clip" / "hf"
    assert (hf / clip_text.CLIP_DIR / clip_text.WEIGHTS).is_file()  # the export carries it for what follows
    assert clip_text.resolve(ModelConfig(source="llava", path=str(hf)))[0] == str(hf / clip_text.CLIP_DIR)
    pred = Predictor(hf, mode="pruned")
    image = synth_dir / next(r["image"] for r in json.loads((synth_dir / "sft.json").read_text()) if "image" in r)
    assert len(pred.predict([Query("What colour is the object ?", image)])) == 1
    # read from the export, offline; the origin survives the copy
    assert pred.summary()["vtp"]["sources"] == {"relevance": "clip_text", "clip_text": str(clip_dir)}
    llm = Predictor(hf, mode="pruned", clip_text="none").summary()["vtp"]
    assert llm["sources"] == {"relevance": SOURCE_LLM} and llm["negate"] is False
    # the next stage, from that export with model.clip_text left at auto, reads the export's copy
    run(run_cfg(synth_dir, tmp_path / "next", **{"model.source": "llava", "model.path": str(hf)}))
    vtp_info = json.loads((tmp_path / "next" / "provenance.json").read_text())["vtp"]
    assert vtp_info["sources"] == {"relevance": "clip_text", "clip_text": str(clip_dir)}
    assert (tmp_path / "next" / "hf" / clip_text.CLIP_DIR / clip_text.WEIGHTS).is_file()

    # the tiny default: no text tower anywhere, the LLM's instruction embeddings and their own sign
    run(run_cfg(synth_dir, tmp_path / "tiny"))
    vtp_info = json.loads((tmp_path / "tiny" / "provenance.json").read_text())["vtp"]
    assert vtp_info["sources"] == {"relevance": "llm_instruction_embeddings"} and vtp_info["negate"] is False
    assert not (tmp_path / "tiny" / "hf" / clip_text.CLIP_DIR).exists()
    assert Predictor(tmp_path / "tiny" / "hf", mode="pruned").summary()["vtp"]["sources"] == {
        "relevance": "llm_instruction_embeddings"}
    # a training-free evaluation of such an export (the pipeline's evaluate_vtp) names the CLIP it lacks
    named = Predictor(tmp_path / "tiny" / "hf", mode="pruned", clip_text=str(clip_dir)).summary()["vtp"]
    assert named["sources"] == {"relevance": "clip_text", "clip_text": str(clip_dir)} and named["negate"] is True


def test_tiny_default_and_resolution_rules(synth_dir, clip_dir):
    tiny = run_cfg(synth_dir, "unused").model
    assert tiny.clip_text == "auto" and clip_text.resolve(tiny) == (None, "auto")
    compose = ModelConfig(source="compose", llm="x", vision_tower=str(clip_dir))
    assert clip_text.resolve(compose)[0] == str(clip_dir)  # the vision tower's own repo
    compose.clip_text = "none"
    assert clip_text.resolve(compose)[0] is None
    assert clip_text.resolve(ModelConfig(source="llava", path="/nowhere"))[0] is None  # no exported clip_text/


def test_configured_but_missing_text_tower_fails_before_training(synth_dir, tmp_path, clip_dir):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from dualspeed.train.run import run

    missing = tmp_path / "no_clip_here"
    with pytest.raises(ConfigError, match=r"config key 'model.clip_text' is .*no_clip_here.* Fix: .*none"):
        run(run_cfg(synth_dir, tmp_path / "run", **{"model.clip_text": str(missing)}))
    assert not (tmp_path / "run" / "provenance.json").exists() and not (tmp_path / "run" / "steps.csv").exists()
    # a vision-only CLIP (what a compose recipe's vision tower may be): auto names the tower and the fix
    vision_only = tmp_path / "vision_only"
    CLIPVisionModel(CLIPVisionConfig(hidden_size=WIDTH, intermediate_size=128, num_hidden_layers=1,
                                     num_attention_heads=4, image_size=32, patch_size=4)).save_pretrained(vision_only)
    where, how = clip_text.resolve(ModelConfig(source="compose", llm="x", vision_tower=str(vision_only)))
    with pytest.raises(ConfigError, match=r"'auto'.*vision tower.*'clip_vision_model' checkpoint.*Fix"):
        clip_text.check(where, how)
    clip_text.check(str(clip_dir), "x")  # a whole CLIP passes


def test_a_clip_of_another_width_is_refused(tiny_model, tokenizer, tmp_path):
    from transformers import CLIPConfig, CLIPModel

    d = tmp_path / "wide"
    d.mkdir()
    tok = write_char_tokenizer(d)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2),
                     vision_config=dict(hidden_size=2 * WIDTH, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=32, patch_size=4), projection_dim=8)
    CLIPModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    with pytest.raises(ConfigError, match="vision width 128 is not the vision tower's 64"):
        tiny_model.attach_clip_text(clip_text.ClipText.load(str(d)), tokenizer)


def test_pipeline_attaches_a_text_tower_only_where_a_grid_method_reads_relevance():
    from dualspeed.grid import recipe
    from dualspeed.grid.variants import point

    cfg = {"model": {"source": "llava", "clip_text": "auto"},
           "grid": {"method": "divprune", "p": 0.9, "r": 0.1, "methods": ["divprune", "random"]}}
    base = point("baseline", "divprune", 0.9, 0.1)
    # a llava-source grid passes the CLIP down exports: every run carries it when any grid method reads relevance
    assert recipe.clip_text(cfg, base, "sft") == "none"  # a 7B export would carry a text tower nothing reads
    cfg["grid"]["methods"].append("cdpruner")
    assert recipe.clip_text(cfg, base, "sft") == "auto"
    cfg["model"]["clip_text"] = "none"
    assert recipe.clip_text(cfg, base, "sft") == "none"


def test_only_the_runs_that_read_relevance_carry_the_stand_in_clip():
    from dualspeed.grid import recipe
    from dualspeed.grid.variants import point

    clip = "runs/t/standins/clip/hf"
    cfg = {"model": {"source": "tiny", "clip_text": "auto"}, "runs_dir": "runs/t",
           "grid": {"method": "divprune", "p": 0.9, "r": 0.1, "methods": ["divprune", "cdpruner"]}}
    base, ds = point("baseline", "divprune", 0.9, 0.1), point("dualspeed", "divprune", 0.9, 0.1)
    cd, cd_pre = point("dualspeed", "cdpruner", 0.9, 0.1), point("vtp_pretrain", "cdpruner", 0.9, 0.1)
    cd_sft = point("vtp_sft", "cdpruner", 0.9, 0.1)
    for pt in (base, ds):
        assert recipe.clip_text(cfg, pt, "pretrain") == recipe.clip_text(cfg, pt, "sft") == "none"
    assert recipe.clip_text(cfg, cd, "pretrain") == recipe.clip_text(cfg, cd, "sft") == clip
    # pruned in pretraining only, yet its export is evaluated under CDPruner; SFT-only pruning, on the full pretraining
    assert recipe.clip_text(cfg, cd_pre, "sft") == clip
    assert recipe.clip_text(cfg, cd_sft, "pretrain") == "none" and recipe.clip_text(cfg, cd_sft, "sft") == clip
    # the baseline's training-free CDPruner evaluation is handed the CLIP its export lacks
    assert recipe.vtp_eval_clip(cfg, "cdpruner") == clip and recipe.vtp_eval_clip(cfg, "divprune") == "none"
    cfg["grid"]["method"] = "cdpruner"  # the baseline's own pruned evaluation now reads relevance
    assert recipe.clip_text(cfg, point("baseline", "cdpruner", 0.9, 0.1), "sft") == clip
    cfg["model"]["clip_text"] = "none"
    assert recipe.clip_text(cfg, cd, "sft") == "none" and recipe.vtp_eval_clip(cfg, "cdpruner") == "none"
    cfg["model"].update(source="compose", clip_text="auto", vision_tower="org/clip-336")
    assert recipe.clip_text(cfg, cd, "pretrain") == "org/clip-336"


def test_the_full_grid_retrains_none_of_the_default_runs():
    """config/full.yaml adds methods (CDPruner reads relevance) and sweeps: every run the default trained keeps
    its spec, so a full run after the default trains only what is new."""
    import yaml

    from dualspeed.grid import recipe
    from dualspeed.grid.variants import all_points

    root = Path(__file__).parents[1] / "config"
    default = yaml.safe_load((root / "config.yaml").read_text())
    full = copy.deepcopy(default)
    full["grid"].update(yaml.safe_load((root / "full.yaml").read_text())["grid"])
    assert any(recipe._reads_relevance(m) for m in full["grid"]["methods"])
    for pt in all_points(default["grid"]):
        assert recipe.pretrain_spec(default, pt) == recipe.pretrain_spec(full, pt), pt
        assert recipe.sft_spec(default, pt) == recipe.sft_spec(full, pt), pt
