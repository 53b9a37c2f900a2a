"""The pre-run data check: every bad sample named, with its file, before a model is loaded."""
import json
import shutil
import subprocess
import sys

import pytest

from dualspeed.config import load_config
from dualspeed.data.samples import DataError
from dualspeed.data.check import check_data
from dualspeed.train.run import run


@pytest.fixture()
def broken_data(synth_dir, tmp_path):
    """A copy of the synthetic SFT data with one sample of each kind of fault a real data set holds."""
    folder = tmp_path / "images"
    shutil.copytree(synth_dir / "images", folder / "images")
    rows = [r for r in json.loads((synth_dir / "sft.json").read_text()) if "image" in r][:12]
    good = folder / rows[0]["image"]
    data = good.read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("this is not an image\n")
    (tmp_path / "outside.png").write_bytes(data)
    faults = {"truncated": "truncated.png", "empty": "empty.png", "text": "text.png", "absolute": str(good.resolve()),
              "escape": "../outside.png", "missing": "nowhere.png"}
    for i, (name, path) in enumerate(faults.items()):
        rows[i + 1] = {**rows[i + 1], "id": name, "image": path}
    rows[8] = {**rows[8], "id": "empty_answer",
               "conversations": [rows[8]["conversations"][0], {"from": "gpt", "value": "  "}]}
    js = tmp_path / "data.json"
    js.write_text(json.dumps(rows))
    return js, folder


def test_every_fault_is_named_with_its_sample(broken_data, tmp_path):
    js, folder = broken_data
    rows, problems = check_data(js, folder, workers=1, cache_file=tmp_path / "cache.json", progress=False)
    by_id = {p.sample_id: p for p in problems}
    assert set(by_id) == {"truncated", "empty", "text", "absolute", "escape", "missing", "empty_answer"}
    assert "decoded" in by_id["truncated"].reason and by_id["truncated"].file.endswith("truncated.png")
    assert "0 bytes" in by_id["empty"].reason
    assert "not an image" in by_id["text"].reason
    assert "absolute" in by_id["absolute"].reason
    assert "leaves the image folder" in by_id["escape"].reason
    assert "not found" in by_id["missing"].reason
    assert "empty answer" in by_id["empty_answer"].reason
    assert len(rows) == 12


def test_cli_exits_non_zero_listing_one_line_per_bad_sample(broken_data, tmp_path):
    js, folder = broken_data
    cmd = [sys.executable, "-m", "dualspeed.data", "check", "--json", str(js), "--image-folder", str(folder),
           "--cache", str(tmp_path / "cache.json")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 7 and all("sample #" in ln and "(id=" in ln for ln in lines)
    # cached: the same verdicts without decoding again, and a repaired file is checked afresh
    cache = json.loads((tmp_path / "cache.json").read_text())
    assert any(v[2] and "decoded" in v[2] for v in cache.values())
    shutil.copy(folder / json.loads(js.read_text())[0]["image"], folder / "truncated.png")
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and len(again.stdout.strip().splitlines()) == 6
    assert "truncated" not in again.stdout


def sft_cfg(js, folder, synth_dir, out, policy):
    return load_config(base={
        "output_dir": str(out), "model": {"source": "tiny", "tokenizer": str(synth_dir / "tokenizer")},
        "data": {"json": str(js), "image_folder": str(folder), "bad_images": policy},
        "train": {"stage": "sft", "llm": "lora", "lora": {"r": 4, "alpha": 8}, "batch_size": 4, "max_steps": 1},
        "fastslow": {"prune": False}})


def test_training_fails_before_loading_a_model_or_skips_and_records(broken_data, synth_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DUALSPEED_CACHE", str(tmp_path / "cache"))
    js, folder = broken_data
    with pytest.raises(DataError, match=r"7 of 12 samples are unusable(.|\n)*id=truncated(.|\n)*bad_images: skip"):
        run(sft_cfg(js, folder, synth_dir, tmp_path / "fail", "fail"))
    assert not (tmp_path / "fail" / "steps.csv").exists()
    out = tmp_path / "skip"
    run(sft_cfg(js, folder, synth_dir, out, "skip"))
    skipped = json.loads((out / "skipped_samples.json").read_text())
    assert len(skipped) == 7 and json.loads((out / "provenance.json").read_text())["skipped_samples"] == 7
    assert json.loads((out / "timing.json").read_text())["samples"] == 4


def test_empty_data_is_refused_by_every_check_naming_the_key_and_file(broken_data, synth_dir, tmp_path, monkeypatch):
    """An SFT file of [] used to pass the check ("0 samples", exit 0) and the preparation, and to fail only once the
    model was built, naming no file."""
    monkeypatch.setenv("DUALSPEED_CACHE", str(tmp_path / "cache"))
    _, folder = broken_data
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    res = subprocess.run([sys.executable, "-m", "dualspeed.data", "check", "--json", str(empty), "--image-folder",
                          str(folder)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and f"{empty} holds no samples" in res.stderr, res.stderr
    res = subprocess.run([sys.executable, "-m", "dualspeed.data", "local", "--out", str(tmp_path / "derived"),
                          "--sft-json", str(empty), "--image-folder", str(folder)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and f"data.sft_json: {empty} holds no samples" in res.stderr, res.stderr
    assert not (tmp_path / "derived" / "local_meta.json").exists()
    with pytest.raises(DataError, match=f"config key 'data.json': {empty} holds no samples"):
        run(sft_cfg(empty, folder, synth_dir, tmp_path / "run", "fail"))
    assert not (tmp_path / "run" / "steps.csv").exists()


def test_skip_that_leaves_no_sample_is_refused(broken_data, synth_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DUALSPEED_CACHE", str(tmp_path / "cache"))
    js, folder = broken_data
    bad = [r for r in json.loads(js.read_text()) if r.get("id") in ("truncated", "empty", "text", "missing")]
    only_bad = tmp_path / "bad.json"
    only_bad.write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"config key 'data.json' \(.*bad.json\): all 4 samples are unusable, so "
                                        r"data.bad_images: skip leaves nothing to train on"):
        run(sft_cfg(only_bad, folder, synth_dir, tmp_path / "run", "skip"))
    from dualspeed.data.local import prepare

    with pytest.raises(DataError, match=r"data.sft_json \(.*bad.json\): all 4 samples are unusable"):
        prepare(tmp_path / "derived", only_bad, folder, bad_images="skip")


def test_a_wrong_image_folder_is_one_line_not_one_per_sample(broken_data, tmp_path):
    js, _ = broken_data
    res = subprocess.run([sys.executable, "-m", "dualspeed.data", "check", "--json", str(js), "--image-folder",
                          str(tmp_path / "no_such_folder")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stdout == "", res.stdout
    assert res.stderr.strip().splitlines() == [
        f"error: image folder {tmp_path / 'no_such_folder'} does not exist (12 of 12 samples of {js} name an image "
        "in it); give the folder their image paths are relative to"]
