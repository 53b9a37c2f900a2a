"""CDPruner, VisionZip and ToMe against plain per-image references written from the papers' descriptions."""
import pytest
import torch

from dualspeed import vtp
from dualspeed.vtp.base import SOURCE_CLIP, SOURCE_LLM
from dualspeed.models.signals import llm_relevance
from dualspeed.vtp.visionzip import split


def cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


# -- CDPruner ----------------------------------------------------------------------------------------
def cdpruner_reference(x, text, mask, k):
    """Relevance by loops, then greedy MAP: each step adds the token with the largest Schur complement
    L_jj - L_jS L_SS^+ L_Sj (the gain in log det), lowest index on ties, near-zero gains counted as zero."""
    n = x.shape[0]
    words = [text[t] for t in range(text.shape[0]) if mask[t]]
    r = [sum(cos(x[i], w) for w in words) / max(len(words), 1) for i in range(n)]
    lo, hi = min(r), max(r)
    q = [1.0] * n if hi - lo < 1e-6 else [(v - lo) / (hi - lo) for v in r]
    L = torch.tensor([[q[i] * cos(x[i], x[j]) * q[j] for j in range(n)] for i in range(n)], dtype=torch.float64)
    chosen = []
    for _ in range(k):
        best, best_gain = None, -1.0
        for j in range(n):
            if j in chosen:
                continue
            gain = float(L[j, j])
            if chosen:
                s = torch.tensor(chosen)
                gain -= float(L[j, s] @ torch.linalg.pinv(L[s][:, s]) @ L[s, j])
            gain = 0.0 if gain < 1e-10 else gain
            if gain > best_gain:
                best, best_gain = j, gain
        chosen.append(best)
    return sorted(chosen)


def llm_ctx(x, text, mask, **kw):
    """The context the model builds without a CLIP text tower: relevance from the LLM embeddings."""
    return vtp.VTPContext(relevance=llm_relevance(x, text, mask), relevance_source=SOURCE_LLM, **kw)


@pytest.mark.parametrize("b,n,d,k", [(2, 12, 16, 1), (3, 20, 24, 5), (2, 16, 32, 15), (1, 9, 12, 9)])
def test_cdpruner_matches_reference(b, n, d, k):
    g = torch.Generator().manual_seed(b * 1000 + n + k)
    x = torch.randn(b, n, d, generator=g, dtype=torch.float64)
    text = torch.randn(b, 4, d, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, True]] * b)
    got = vtp.get("cdpruner")(x, k, llm_ctx(x, text, mask))
    for i in range(b):
        assert got[i].tolist() == cdpruner_reference(x[i], text[i], mask[i], k)


def test_cdpruner_ties_and_duplicates_are_safe():
    # 4 distinct directions, each repeated 3 times; no instruction tokens -> q = 1, a plain DPP
    base = torch.eye(6, dtype=torch.float64)[:4]
    x = base.repeat_interleave(3, dim=0)[None].repeat(2, 1, 1)  # [2, 12, 6]
    text, mask = torch.zeros(2, 3, 6, dtype=torch.float64), torch.zeros(2, 3, dtype=bool)
    ctx = llm_ctx(x, text, mask)
    got = vtp.get("cdpruner")(x, 7, ctx)
    # the first copy of each direction (lowest index on ties), then zero gains -> lowest remaining indices
    assert got[0].tolist() == cdpruner_reference(x[0], text[0], mask[0], 7)
    assert {0, 3, 6, 9} <= set(got[0].tolist())
    red = vtp.get("cdpruner").reduce(x.float(), 7, llm_ctx(x.float(), text.float(), mask))
    assert torch.isfinite(red.apply(x.float())).all()


def test_cdpruner_relevance_prefers_tokens_like_the_question():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 30, 16, generator=g)
    word = x[0, 7] + 0.01 * torch.randn(16, generator=g)
    ctx = llm_ctx(x, word[None, None], torch.ones(1, 1, dtype=bool))
    assert 7 in vtp.get("cdpruner")(x, 1, ctx)[0].tolist()
    assert 7 not in vtp.get("cdpruner:negate=true")(x, 3, ctx)[0].tolist()


def test_cdpruner_sign_follows_the_source_unless_forced():
    """Unset: the LLM source keeps the sign, the CLIP source is negated (the published code); an option
    forces one sign for both, and provenance records the sign that ran."""
    r = torch.tensor([[0.1, 0.9, 0.5, 0.3, 0.2, 0.8]])
    x = torch.eye(6)[None]  # orthogonal tokens: with k = 1 the DPP keeps the largest q
    for source, best in ((SOURCE_LLM, 1), (SOURCE_CLIP, 0), (None, 1)):
        ctx = vtp.VTPContext(relevance=r, relevance_source=source)
        assert vtp.get("cdpruner")(x, 1, ctx)[0].tolist() == [best]
        assert vtp.get("cdpruner:negate=false")(x, 1, ctx)[0].tolist() == [1]
        assert vtp.get("cdpruner:negate=true")(x, 1, ctx)[0].tolist() == [0]
    assert vtp.get("cdpruner").describe()["negate"] == "auto"
    assert vtp.get("cdpruner").provenance({"relevance": SOURCE_CLIP})["negate"] is True
    assert vtp.get("cdpruner").provenance({"relevance": SOURCE_LLM})["negate"] is False
    assert vtp.get("cdpruner:negate=false").provenance({"relevance": SOURCE_CLIP})["negate"] is False
    with pytest.raises(ValueError, match="true, false or auto"):
        vtp.get("cdpruner:negate=maybe")


def test_cdpruner_without_relevance_signal_is_a_clear_error():
    with pytest.raises(ValueError, match="relevance"):
        vtp.get("cdpruner")(torch.randn(1, 8, 4), 2)


# -- VisionZip ---------------------------------------------------------------------------------------
def visionzip_reference(x, attn, keys, k):
    """Dominant: the nd most CLS-attended patches. Contextual: the rest in raster order, every step-th is
    a target, each other patch joins its most key-similar target; a contextual token is its group's mean."""
    n = x.shape[0]
    nd, nc = split(k, 54 / 64)
    ranked = sorted(range(n), key=lambda i: (-float(attn[i]), i))
    dom = ranked[:nd]
    rest = sorted(ranked[nd:])
    out = {i: x[i] for i in dom}
    if nc:
        step = max(1, len(rest) // nc)
        targets = [rest[p] for p in range(0, len(rest), step)][:nc]
        groups = {t: [t] for t in targets}
        for i in rest:
            if i in groups:
                continue
            sims = [cos(keys[i], keys[t]) for t in targets]
            groups[targets[sims.index(max(sims))]].append(i)
        out.update({t: torch.stack([x[i] for i in g]).mean(0) for t, g in groups.items()})
    order = sorted(out)
    return order, torch.stack([out[i] for i in order])


@pytest.mark.parametrize("b,n,k", [(2, 64, 6), (3, 36, 12), (2, 16, 1), (2, 25, 24), (1, 16, 16)])
def test_visionzip_matches_reference(b, n, k):
    g = torch.Generator().manual_seed(n + k)
    x = torch.randn(b, n, 8, generator=g, dtype=torch.float64)
    attn = torch.rand(b, n, generator=g).round(decimals=1)  # coarse values: ties in attention
    keys = torch.randn(b, n, 4, generator=g)
    red = vtp.get("visionzip").reduce(x, k, vtp.VTPContext(cls_attention=attn, keys=keys))
    out = red.apply(x)
    for i in range(b):
        order, ref = visionzip_reference(x[i], attn[i], keys[i], k)
        assert red.index[i].tolist() == order
        torch.testing.assert_close(out[i], ref)


def test_visionzip_split_is_configurable():
    assert split(64, 54 / 64) == (54, 10) and split(6, 54 / 64) == (5, 1) and split(1, 54 / 64) == (1, 0)
    ctx = vtp.VTPContext(cls_attention=torch.rand(1, 64), keys=torch.randn(1, 64, 4))
    red = vtp.get("visionzip:dominant=3").reduce(torch.randn(1, 64, 8), 8, ctx)
    assert (red.weights > 0).sum(-1).eq(1).sum() >= 3  # three single-patch tokens, five merged groups
    assert int((red.weights > 0).sum()) == 64  # every patch is in exactly one output token


# -- ToMe --------------------------------------------------------------------------------------------
def tome_reference(x, k):
    """Groups of original indices, merged by bipartite soft matching until k remain."""
    groups = [[i] for i in range(x.shape[0])]

    def mean(gr):
        return torch.stack([x[i] for i in gr]).mean(0)

    while len(groups) > k:
        a, bb = groups[0::2], groups[1::2]
        r = min(len(groups) - k, len(a))
        edges = []
        for ai, ga in enumerate(a):
            sims = [cos(mean(ga), mean(gb)) for gb in bb]
            edges.append((-max(sims), ai, sims.index(max(sims))))
        merged = sorted(edges)[:r]  # most similar first, lower A index on ties
        new_b = [list(gb) for gb in bb]
        for _, ai, bi in merged:
            new_b[bi] += a[ai]
        done = {ai for _, ai, _ in merged}
        kept_a = [ga for ai, ga in enumerate(a) if ai not in done]
        # a token's place is the original index it started from: an A token's own, a B token's own
        groups = sorted(kept_a + new_b, key=lambda gr: gr[0] if gr in kept_a else bb[new_b.index(gr)][0])
    return groups


@pytest.mark.parametrize("b,n,k", [(2, 16, 1), (3, 64, 6), (2, 25, 7), (2, 10, 9), (1, 8, 8)])
def test_tome_matches_reference(b, n, k):
    g = torch.Generator().manual_seed(n * 10 + k)
    x = torch.randn(b, n, 6, generator=g, dtype=torch.float64)
    red = vtp.get("tome").reduce(x, k)
    out = red.apply(x)
    for i in range(b):
        groups = tome_reference(x[i], k)
        assert len(groups) == k
        members = red.members(n)[i]
        for j, gr in enumerate(groups):
            assert set(members[j].nonzero().flatten().tolist()) == set(gr)
            torch.testing.assert_close(out[i, j], torch.stack([x[i, t] for t in gr]).mean(0))


def test_tome_ties_go_to_lower_indices():
    # every pair equally similar: A = {0, 2, 4} all pick B token 1, and A tokens 0 and 2 merge first
    x = torch.ones(1, 6, 3, dtype=torch.float64)
    red = vtp.get("tome").reduce(x, 4)
    assert [sorted(g) for g in tome_reference(x[0], 4)] == [[0, 1, 2], [3], [4], [5]]
    assert [r.nonzero().flatten().tolist() for r in red.weights[0]] == [[0, 1, 2], [3], [4], [5]]
    assert red.index[0].tolist() == [1, 3, 4, 5]  # a merged token sits where its B token was


# -- all methods -------------------------------------------------------------------------------------
def full_context(b, n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return vtp.VTPContext(text_embeds=torch.randn(b, 3, d, generator=g), text_mask=torch.ones(b, 3, dtype=bool),
                          cls_attention=torch.rand(b, n, generator=g), keys=torch.randn(b, n, 4, generator=g),
                          generator=torch.Generator().manual_seed(seed), relevance=torch.randn(b, n, generator=g),
                          relevance_source=SOURCE_LLM)


@pytest.mark.parametrize("name", ["cdpruner", "visionzip", "tome"])
def test_batched_equals_one_image_at_a_time_and_is_deterministic(name):
    x = torch.randn(5, 49, 8)
    ctx = full_context(5, 49, 8)
    red = vtp.get(name).reduce(x, 7, ctx)
    assert torch.equal(red.index, vtp.get(name).reduce(x, 7, ctx).index)
    for i in range(5):
        one = vtp.VTPContext(text_embeds=ctx.text_embeds[i:i + 1], text_mask=ctx.text_mask[i:i + 1],
                             cls_attention=ctx.cls_attention[i:i + 1], keys=ctx.keys[i:i + 1],
                             relevance=ctx.relevance[i:i + 1], relevance_source=ctx.relevance_source)
        r1 = vtp.get(name).reduce(x[i:i + 1], 7, one)
        assert torch.equal(r1.index[0], red.index[i])
        torch.testing.assert_close(r1.apply(x[i:i + 1])[0], red.apply(x)[i])


@pytest.mark.parametrize("name", ["cdpruner", "visionzip", "tome"])
def test_gradient_reaches_the_features_through_the_reduction(name):
    x = torch.randn(2, 16, 8, requires_grad=True)
    red = vtp.get(name).reduce(x.detach(), 4, full_context(2, 16, 8))
    red.apply(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
