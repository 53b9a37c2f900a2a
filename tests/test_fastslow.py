import os
import subprocess
import sys
import textwrap

import pytest
import torch

from dualspeed.models.isolator import ModeIsolator
from dualspeed.models.llava import answer_logits
from dualspeed.modes import FAST, SLOW
from dualspeed.train.losses import ModeSchedule, distill_kl


def test_schedule_is_deterministic_and_has_rate_r():
    s = ModeSchedule(0.1, seed=3)
    modes = [s.mode(i) for i in range(5000)]
    assert modes == [ModeSchedule(0.1, seed=3).mode(i) for i in range(5000)]
    assert 0.08 < modes.count(SLOW) / len(modes) < 0.12
    assert modes != [ModeSchedule(0.1, seed=4).mode(i) for i in range(5000)]
    assert all(ModeSchedule(0.0).mode(i) == FAST for i in range(100))
    assert all(ModeSchedule(1.0).mode(i) == SLOW for i in range(100))


def test_schedule_rejects_bad_r():
    with pytest.raises(ValueError):
        ModeSchedule(1.5)


def test_kl_zero_for_identical_inputs_and_positive_otherwise():
    z = torch.randn(7, 11)
    assert distill_kl(z, z.clone()).abs().item() < 1e-6
    assert distill_kl(z, torch.randn(7, 11)).item() > 0
    with pytest.raises(ValueError, match="answer positions"):
        distill_kl(z, torch.randn(6, 11))


def test_answer_logits_align_sequences_of_different_length():
    # the same answers at different offsets give the same rows
    v = 5
    short = torch.randn(1, 6, v)
    long = torch.cat([torch.randn(1, 3, v), short], dim=1)
    lab_s = torch.tensor([[-100, -100, -100, -100, 2, 3]])
    lab_l = torch.cat([torch.full((1, 3), -100), lab_s], dim=1)
    assert torch.equal(answer_logits(short, lab_s), answer_logits(long, lab_l))


def test_isolator_prepends_l_tokens():
    iso = ModeIsolator(4, 8)
    out = iso(torch.zeros(2, 6, 8))
    assert out.shape == (2, 10, 8)
    assert torch.equal(out[0, :4], iso.prompt.detach())


def test_two_gloo_ranks_draw_the_same_modes(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(textwrap.dedent("""
        import torch, torch.distributed as dist
        from dualspeed.train.losses import ModeSchedule
        dist.init_process_group("gloo")
        s = ModeSchedule(0.3, seed=7)
        mine = torch.tensor([s.mode(i) == "slow" for i in range(200)], dtype=torch.int64)
        everyone = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(everyone, mine)
        if dist.get_rank() == 0:
            assert dist.get_world_size() == 2
            assert all(torch.equal(everyone[0], e) for e in everyone), "ranks disagree on the mode sequence"
            assert 0 < int(mine.sum()) < 200
            print("MODES-AGREE", int(mine.sum()))
        dist.destroy_process_group()
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                          str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "MODES-AGREE" in res.stdout
