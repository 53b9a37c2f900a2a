import json

import pytest

from dualspeed.data.conversation import IGNORE, build_prompt
from dualspeed.data.dataset import LlavaDataset
from dualspeed.data.samples import DataError, load_samples
from dualspeed.models.build import tiny_image_processor


def _write(tmp_path, rows):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(rows))
    return p


def test_missing_image_names_file_and_sample(tmp_path, synth_dir):
    rows = json.loads((synth_dir / "sft.json").read_text())[:5]
    rows[3] = dict(rows[3], image="images/does_not_exist.png", id="sample-xyz")
    rows[3]["conversations"] = [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]
    p = _write(tmp_path, rows)
    with pytest.raises(DataError) as e:
        load_samples(p, synth_dir)
    msg = str(e.value)
    assert str(p) in msg and "#3" in msg and "sample-xyz" in msg and "does_not_exist.png" in msg


@pytest.mark.parametrize("conv,why", [
    ([{"from": "human", "value": "hi"}], "pairs"),
    ([{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}], "turn 0"),
    ([{"from": "human", "value": "q"}, {"from": "gpt", "value": 3}], "turn 1"),
])
def test_malformed_conversation_names_file_and_sample(tmp_path, synth_dir, conv, why):
    p = _write(tmp_path, [{"id": "ok", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
                          {"id": "broken-7", "conversations": conv}])
    with pytest.raises(DataError) as e:
        load_samples(p, synth_dir)
    assert str(p) in str(e.value) and "broken-7" in str(e.value) and why in str(e.value)


def test_image_placeholder_must_match_image(tmp_path, synth_dir):
    p = _write(tmp_path, [{"id": "t", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}])
    with pytest.raises(DataError, match="no 'image'"):
        load_samples(p, synth_dir)


def test_labels_cover_answers_only(tokenizer):
    conv = [{"from": "human", "value": "<image>\nHow many objects are there ?"}, {"from": "gpt", "value": "two"},
            {"from": "human", "value": "Is there a red object ?"}, {"from": "gpt", "value": "no"}]
    ids, labels = build_prompt(tokenizer, conv, "vicuna_v1")
    supervised = [t for t, l in zip(ids, labels) if l != IGNORE]
    assert tokenizer.decode(supervised) == "two </s> no </s>"
    assert ids.count(tokenizer.convert_tokens_to_ids("<image>")) == 1
    gen_ids, _ = build_prompt(tokenizer, conv[:2], "vicuna_v1", for_generation=True)
    assert tokenizer.decode(gen_ids).endswith("assistant :")


def test_plain_template_drops_question(tokenizer):
    ids, labels = build_prompt(tokenizer, [{"from": "human", "value": "<image>\nignored words"},
                                           {"from": "gpt", "value": "one objects : a red object at the top left ."}], "plain")
    assert "ignored" not in tokenizer.decode(ids)
    assert labels[:2] == [IGNORE, IGNORE]


def test_dataset_items_have_pixels_only_with_images(synth_dir, tokenizer):
    ds = LlavaDataset(synth_dir / "sft.json", synth_dir, tokenizer, tiny_image_processor(32))
    kinds = {("pixel_values" in ds[i], "image" in ds.rows[i]) for i in range(len(ds))}
    assert kinds == {(True, True), (False, False)}


def test_item_cache_gives_the_same_items_and_only_holds_a_data_set_that_fits(synth_dir, tokenizer, monkeypatch):
    import torch

    from dualspeed.data import dataset as dataset_mod

    args = (synth_dir / "sft.json", synth_dir, tokenizer, tiny_image_processor(32))
    fresh = LlavaDataset(*args)
    n = 40
    first = [fresh._read(i) for i in range(n)]
    sizes = [sum(t.numel() * t.element_size() for t in it.values()) for it in first]
    for budget, cached in ((sum(sizes), True), (sum(sizes[:n // 2]), False)):
        monkeypatch.setattr(dataset_mod, "ITEM_CACHE_BYTES", budget)
        ds = LlavaDataset(*args)
        reads = []
        read = ds._read
        ds._read = lambda i: reads.append(i) or read(i)
        for _ in range(2):  # the second pass reads from the cache when the data set fits
            for i in range(n):
                item = ds[i]
                assert item.keys() == first[i].keys()
                assert all(torch.equal(item[k], first[i][k]) for k in item)
                item.pop("input_ids")  # a caller's edit of its dict leaves a cached item whole
        assert len(reads) == (n if cached else 2 * n)
        assert len(ds._cache) == (n if cached else 0) and ds._cache_bytes <= budget
        assert all("input_ids" in it for it in ds._cache.values())


def test_dataloader_workers_keep_no_item_cache(synth_dir, tokenizer):
    from torch.utils.data import DataLoader

    ds = LlavaDataset(synth_dir / "sft.json", synth_dir, tokenizer, tiny_image_processor(32))
    # each worker returns the size of its copy's cache after reading its items: a worker starts afresh every epoch
    loader = DataLoader(range(8), batch_size=4, num_workers=1,
                        collate_fn=lambda idx: ([ds[i] for i in idx], len(ds._cache), ds._caching))
    assert [(held, on) for _, held, on in loader] == [(0, False), (0, False)]
    assert ds[0] and len(ds._cache) == 1  # the training process itself still keeps them
