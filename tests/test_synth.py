import json

from dualspeed.data.synth import SynthConfig, generate


def test_synthetic_data_is_deterministic(tmp_path):
    cfg = SynthConfig(seed=5, n_clip=4, n_corpus=4, n_pretrain=4, n_sft=4, n_text_only=2, n_eval=3)
    generate(tmp_path / "a", cfg)
    generate(tmp_path / "b", cfg)
    for name in ("sft.json", "eval_count.json", "tokenizer/tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    img = json.loads((tmp_path / "a" / "eval_count.json").read_text())[0]["image"]
    assert (tmp_path / "a" / img).read_bytes() == (tmp_path / "b" / img).read_bytes()


def test_eval_sets_are_held_out(synth_dir):
    train = {r.get("image") for n in ("clip", "pretrain", "sft") for r in json.loads((synth_dir / f"{n}.json").read_text())}
    for task in ("colour", "count", "presence", "position"):
        ev = json.loads((synth_dir / f"eval_{task}.json").read_text())
        assert ev and not ({r["image"] for r in ev} & train)
