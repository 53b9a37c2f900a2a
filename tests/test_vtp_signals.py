"""Signals reach the methods from the model's one tower pass, and every registered method runs in the model."""
import pytest
import torch

from dualspeed import vtp
from dualspeed.models.prune import Prune
from dualspeed.vtp.base import VTPContext, VTPMethod, register


def test_tower_signals_equal_the_attention_maps_of_the_feature_layer(tiny_model, batch):
    prune = Prune("visionzip", 0.9)
    with torch.no_grad():
        feats, sig = tiny_model.encode_images(batch["pixel_values"], prune)
        assert torch.equal(tiny_model.encode_images(batch["pixel_values"]), feats)  # the hooks change nothing
        tower = tiny_model.llava.model.vision_tower
        tower.config._attn_implementation = "eager"  # the reference: explicit attention maps of every layer
        out = tower(batch["pixel_values"], output_attentions=True)
    # the tiny model's features are hidden_states[-1], the last layer's output: its attention is attentions[-1]
    ref = out.attentions[-1][:, :, 0, 1:].sum(1)
    torch.testing.assert_close(sig["cls_attention"], ref)
    assert sig["keys"].shape == (feats.shape[0], feats.shape[1], 64 // 4)


def test_no_signal_is_computed_unless_declared(tiny_model, batch):
    _, sig = tiny_model.encode_images(batch["pixel_values"], Prune("divprune", 0.9))
    assert sig == {}
    _, sig = tiny_model.encode_images(batch["pixel_values"], Prune("cdpruner", 0.9))
    assert sig == {}  # no CLIP text tower attached: its relevance comes from the LLM's embeddings, not the tower
    hooks = [m._forward_hooks for m in tiny_model.llava.model.vision_tower.modules()]
    assert not any(hooks)  # removed after the pass


@pytest.mark.parametrize("name", ["cdpruner", "visionzip", "tome"])
def test_every_method_trains_and_infers_in_the_model(tiny_model, batch, name):
    n_img = int(batch["has_image"].sum())
    tiny_model.train()
    fast = tiny_model(**batch, prune=Prune(name, 0.9), isolator=True)
    assert fast.visual_tokens == n_img * (6 + 4)
    fast.ce.backward()
    assert tiny_model.llava.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0
    tiny_model.eval()
    out, n_vis = tiny_model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                     batch["has_image"], prune=Prune(name, 0.9), max_new_tokens=2)
    assert n_vis == n_img * 6 and out.shape[0] == batch["input_ids"].shape[0]


def test_unknown_signal_and_unknown_option_fail_before_any_step(registry):
    with pytest.raises(ValueError, match="unknown signal"):
        @register("needs_depth_map")
        class Depth(VTPMethod):
            signals = ("depth",)

            def select(self, feats, k, ctx):
                return torch.arange(k).expand(feats.shape[0], k)
    with pytest.raises(ValueError, match="does not take options"):
        Prune("tome:speed=2", 0.9)
    with pytest.raises(KeyError, match="known methods"):
        Prune("visionzipp", 0.9)
    assert "needs_depth_map" not in vtp.available()


def test_a_selection_plugin_written_against_the_old_interface_still_runs(tiny_model, batch, registry):
    @register("old_style_text")
    class OldStyle(VTPMethod):
        needs_text = True

        def select(self, feats, k, ctx: VTPContext):
            assert ctx.text_embeds.shape[0] == feats.shape[0]
            return feats.norm(dim=-1).topk(k, dim=1).indices

    with torch.no_grad():
        out = tiny_model(**batch, prune=Prune("old_style_text", 0.9))
    assert out.visual_tokens == int(batch["has_image"].sum()) * 6


def test_readme_examples_run_in_the_model(tiny_model, batch, registry, tmp_path):
    """The selection and the merge method of docs/adding-a-method.md, each loaded as one file."""
    import re
    from pathlib import Path

    from dualspeed.vtp import _load_external

    section = (Path(__file__).parents[1] / "docs" / "adding-a-method.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    for i, code in enumerate(blocks):
        f = tmp_path / f"plugin{i}.py"
        f.write_text(code.replace("from .base import", "from dualspeed.vtp.base import"))
        _load_external(str(f))
    n_img = int(batch["has_image"].sum())
    with torch.no_grad():
        for name, kind in (("textsim", "select"), ("rowmean", "merge")):
            assert vtp.get(name).kind == kind
            assert tiny_model(**batch, prune=Prune(name, 0.9)).visual_tokens == n_img * 6
