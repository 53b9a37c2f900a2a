import torch

from dualspeed.models.prune import Prune


def test_keep_ratio_one_equals_no_pruning(tiny_model, batch):
    with torch.no_grad():
        full = tiny_model(**batch, return_logits=True)
        kept = tiny_model(**batch, prune=Prune("divprune", 0.0), return_logits=True)
    assert torch.equal(full.labels, kept.labels)
    torch.testing.assert_close(full.logits, kept.logits, rtol=0, atol=0)


def test_pruned_batch_feeds_k_plus_l_tokens_and_keeps_answers(tiny_model, batch):
    n_img = int(batch["has_image"].sum())
    with torch.no_grad():
        full = tiny_model(**batch)
        fast = tiny_model(**batch, prune=Prune("divprune", 0.9), isolator=True)
        naive = tiny_model(**batch, prune=Prune("divprune", 0.9), isolator=False)
    assert full.visual_tokens == n_img * 64
    assert fast.visual_tokens == n_img * (6 + 4)
    assert naive.visual_tokens == n_img * 6
    assert torch.equal(full.targets, fast.targets)  # same answers, aligned across sequence lengths


def test_isolator_only_in_fast_mode(tiny_model, batch):
    """Changing the isolator changes fast-mode outputs and leaves full-sequence outputs untouched."""
    prune = Prune("divprune", 0.9)
    with torch.no_grad():
        full_a = tiny_model(**batch).answer_logits
        fast_a = tiny_model(**batch, prune=prune, isolator=True).answer_logits
        noiso_a = tiny_model(**batch, prune=prune, isolator=False).answer_logits
        tiny_model.isolator.prompt.add_(1.0)
        full_b = tiny_model(**batch).answer_logits
        fast_b = tiny_model(**batch, prune=prune, isolator=True).answer_logits
        noiso_b = tiny_model(**batch, prune=prune, isolator=False).answer_logits
    assert torch.equal(full_a, full_b)
    assert torch.equal(noiso_a, noiso_b)
    assert not torch.allclose(fast_a, fast_b)


def test_isolator_sits_right_before_pruned_tokens(tiny_model, batch):
    prune = Prune("divprune", 0.9)
    feats = tiny_model.encode_images(batch["pixel_values"])
    seq = tiny_model.visual_sequence(feats, prune, isolator=True)
    assert torch.equal(seq[:, :4], tiny_model.isolator.prompt.expand(seq.shape[0], -1, -1))
    emb, mask, labels, vis = tiny_model.splice(batch["input_ids"], batch["attention_mask"], batch["labels"], seq,
                                               batch["has_image"])
    ids = batch["input_ids"][0]
    p = int((ids == tiny_model.image_token_id).nonzero()[0])
    assert torch.equal(emb[0, p:p + 10], seq[0])
    assert (labels[0, p:p + 10] == -100).all()
    assert vis[0, p:p + 10].all() and int(vis[0].sum()) == 10  # the visual positions, isolator included


def test_text_only_sample_is_untouched_by_splice(tiny_model, batch):
    b = int((~batch["has_image"]).nonzero()[0])
    n = int(batch["attention_mask"][b].sum())
    feats = tiny_model.encode_images(batch["pixel_values"])
    emb, mask, labels, vis = tiny_model.splice(batch["input_ids"], batch["attention_mask"], batch["labels"], feats,
                                               batch["has_image"])
    assert torch.equal(emb[b, :n], tiny_model.embed_tokens(batch["input_ids"][b, :n]))
    assert int(mask[b].sum()) == n
    assert not vis[b].any()
