"""scripts/kept_objects.py finds a scene's objects where scenes.draw put them: each object's 2x2 patches, in its
quadrant, and nothing of the noisy background (docs/results.md#regime-or-defect reads its shares)."""
import importlib.util
import random
from pathlib import Path

import numpy as np
import pytest

from dualspeed.data.scenes import QUADRANTS, SceneConfig, draw

spec = importlib.util.spec_from_file_location("kept_objects", Path(__file__).parents[1] / "scripts" / "kept_objects.py")
kept_objects = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kept_objects)


@pytest.mark.parametrize("seed", range(20))
def test_object_patches_are_the_drawn_objects(seed):
    cfg = SceneConfig()
    img, scene = draw(random.Random(seed), np.random.default_rng(seed), cfg)
    side = cfg.image_size // cfg.patch_size
    obj, quad = kept_objects.object_patches(img, side)
    assert obj.sum() == len(scene) * cfg.object_cells ** 2
    assert sorted(set(quad[obj].tolist())) == sorted(QUADRANTS.index(q) for _, q in scene)
