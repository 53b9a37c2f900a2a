import pytest
import torch

from dualspeed import vtp
from dualspeed.vtp.divprune import DivPrune


def greedy_maxmin_reference(x: torch.Tensor, k: int) -> list[int]:
    """Plain greedy max-min on cosine distance, one image, written independently of the batched code."""
    n = x.shape[0]
    xn = x / x.norm(dim=1, keepdim=True)
    d = [[float(1 - xn[i] @ xn[j]) for j in range(n)] for i in range(n)]
    d = [[max(v, 0.0) for v in row] for row in d]
    # first: the token whose nearest other token is farthest
    nearest = [min(d[i][j] for j in range(n) if j != i) for i in range(n)]
    chosen = [max(range(n), key=lambda i: (nearest[i], -i))]
    while len(chosen) < k:
        best, best_score = None, -1.0
        for i in range(n):
            if i in chosen:
                continue
            score = min(d[i][j] for j in chosen)
            if score > best_score:
                best, best_score = i, score
        chosen.append(best)
    return sorted(chosen)


@pytest.mark.parametrize("b,n,d,k", [(1, 16, 8, 4), (3, 64, 32, 6), (2, 49, 16, 10), (4, 36, 64, 35)])
def test_divprune_matches_greedy_reference(b, n, d, k):
    g = torch.Generator().manual_seed(n * 100 + k)
    feats = torch.randn(b, n, d, generator=g, dtype=torch.float64)
    got = vtp.get("divprune")(feats, k)
    assert got.shape == (b, k)
    for i in range(b):
        assert got[i].tolist() == greedy_maxmin_reference(feats[i], k)


def test_divprune_redundant_background_never_repeats_and_finds_objects():
    # 60 identical background tokens + 4 distinct objects: a diverse pick must take all 4 objects
    bg = torch.ones(1, 60, 8)
    objs = torch.eye(8)[None, :4] * 5 + 1
    feats = torch.cat([bg[:, :30], objs, bg[:, 30:]], dim=1)
    got = vtp.get("divprune")(feats, 6)[0].tolist()
    assert len(set(got)) == 6
    assert {30, 31, 32, 33} <= set(got)
    assert got == greedy_maxmin_reference(feats[0].double(), 6)


@pytest.mark.parametrize("name", ["divprune", "random", "pool"])
def test_every_method_returns_sorted_unique_indices(name):
    feats = torch.randn(3, 64, 16)
    idx = vtp.get(name)(feats, 6, vtp.VTPContext(generator=torch.Generator().manual_seed(0)))
    assert idx.shape == (3, 6)
    assert (idx[:, 1:] > idx[:, :-1]).all()
    assert int(idx.min()) >= 0 and int(idx.max()) < 64


def test_pool_spreads_over_the_grid():
    idx = vtp.get("pool")(torch.randn(1, 64, 4), 16)[0]
    rows, cols = idx // 8, idx % 8
    assert set(rows.tolist()) == {0, 2, 5, 7} and set(cols.tolist()) == {0, 2, 5, 7}


def test_keep_all_is_identity_for_every_method():
    feats = torch.randn(2, 10, 4)
    for name in vtp.available():
        red = vtp.get(name).reduce(feats, 10)
        assert red.index.tolist() == [list(range(10))] * 2 and torch.equal(red.apply(feats), feats)


def test_unknown_method_lists_known_ones():
    with pytest.raises(KeyError) as e:
        vtp.get("nope")
    for name in ("divprune", "random", "pool"):
        assert name in str(e.value)


def test_keep_count_follows_paper_rule():
    assert vtp.keep_count(576, 0.9) == 57
    assert vtp.keep_count(64, 0.9) == 6
    assert vtp.keep_count(64, 0.0) == 64
    with pytest.raises(ValueError):
        vtp.keep_count(64, 1.0)


def test_divprune_is_batched_not_looped_per_image():
    # the same image repeated must give the same selection in every row, in one call
    x = torch.randn(1, 32, 8).expand(5, -1, -1)
    got = DivPrune()(x, 5)
    assert (got == got[0]).all()


def test_full_grid_compares_every_method_of_the_package():
    from pathlib import Path

    import yaml

    from dualspeed.vtp.base import _REGISTRY

    ours = {n for n, cls in _REGISTRY.items() if cls.__module__.startswith("dualspeed.vtp.")}
    # the default grid runs DivPrune alone to fit its time; the full grid compares every method
    cfg = yaml.safe_load((Path(__file__).parents[1] / "config" / "full.yaml").read_text())
    assert set(cfg["grid"]["methods"]) == ours, "add the new method to grid.methods in config/full.yaml"


def test_a_plugin_that_declares_no_options_refuses_one_naming_it(registry):
    @vtp.register("l2norm_test")
    class L2Norm(vtp.VTPMethod):
        def select(self, feats, k, ctx):
            return feats.norm(dim=-1).topk(k, dim=1).indices

    assert vtp.get("l2norm_test").name == "l2norm_test"
    with pytest.raises(ValueError, match=r"'l2norm_test' does not take options \['foo'\]; its options: it takes none"):
        vtp.check("l2norm_test:foo=1")


def test_an_option_given_twice_is_refused():
    with pytest.raises(ValueError, match="'dominant' is given twice"):
        vtp.parse("visionzip:dominant=0.5+dominant=0.6")
    assert vtp.parse("visionzip:dominant=0.5+contextual=2") == ("visionzip", {"dominant": 0.5, "contextual": 2})


def test_a_plugin_that_fails_to_import_is_named(tmp_path):
    import os
    import subprocess
    import sys

    bad = tmp_path / "broken_method.py"
    bad.write_text("import no_such_module_here\n")
    res = subprocess.run([sys.executable, "-c", "import dualspeed.vtp"], capture_output=True, text=True,
                         env={**os.environ, "DUALSPEED_VTP_PLUGINS": str(bad)}, timeout=300)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert str(bad) in last and "ModuleNotFoundError" in last and "no_such_module_here" in last, res.stderr[-2000:]
