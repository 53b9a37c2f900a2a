import torch

from dualspeed import vtp
from dualspeed.bench.presets import PRESETS
from dualspeed.bench.vtp_cost import vtp_costs


def test_every_method_is_timed_on_the_presets_batch_of_crops():
    res = vtp_costs({**PRESETS["tiny-next"], "batch": 2}, "cpu", torch.float32, reps=1, fast_step_s=0.5)
    assert res["crops_per_batch"] == 2 * 5 and res["tokens_per_crop"] == 64 and res["k"] == 6
    assert set(res["methods"]) == set(vtp.available())
    for cost in res["methods"].values():
        assert cost["ms_per_batch"] > 0
        assert cost["fraction_of_fast_step"] == cost["ms_per_batch"] / 1000 / 0.5
