"""The global batch is the recipe's quantity: grad_accum follows from it and the process count, a batch that does
not split is refused (at plan time and at the start of a run, before any data or model), and the training order
is cut into whole global batches that no process count changes. The multi-process runs are in
test_distributed.py."""
import copy
import json
from pathlib import Path

import pytest
import yaml
from torch.utils.data import BatchSampler

from dualspeed.config import BatchPlan, ConfigError, TrainConfig, batch_plan, load_config
from dualspeed.data.sampler import GlobalBatchSampler
from dualspeed.grid.plan_check import PlanError, check
from dualspeed.train.resume import _comparable, differing_keys

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def recipe(name):
    return yaml.safe_load((ROOT / "config" / name).read_text())


@pytest.mark.parametrize("world, accum", [(1, 16), (2, 8), (8, 2), (16, 1)])
def test_grad_accum_follows_from_the_global_batch_and_the_process_count(world, accum):
    plan = batch_plan(TrainConfig(global_batch_size=128, batch_size=8), world)
    assert plan == BatchPlan(global_batch=128, per_device=8, grad_accum=accum, world_size=world)


def test_without_a_global_batch_grad_accum_is_used_as_given():
    assert batch_plan(TrainConfig(batch_size=8), 2) == BatchPlan(16, 8, 1, 2)
    assert batch_plan(TrainConfig(batch_size=8, grad_accum=3), 2) == BatchPlan(48, 8, 3, 2)
    # a resumed run on another process count keeps its checkpoint's global batch when grad_accum is left derived
    assert batch_plan(TrainConfig(batch_size=8), 1, continues=16) == BatchPlan(16, 8, 2, 1)


def test_a_global_batch_that_does_not_split_is_refused_naming_keys_world_size_and_fix():
    with pytest.raises(ConfigError) as e:
        batch_plan(TrainConfig(global_batch_size=128, batch_size=16), 16)
    msg = str(e.value)
    assert "'train.global_batch_size' is 128" in msg and "train.batch_size (16) x 16 processes = 256" in msg
    assert "set train.batch_size to a divisor of 8" in msg
    with pytest.raises(ConfigError, match=r"does not split evenly over 3 processes at all"):
        batch_plan(TrainConfig(global_batch_size=128, batch_size=4), 3)


def test_global_batch_and_grad_accum_set_inconsistently_are_refused():
    assert batch_plan(TrainConfig(global_batch_size=128, batch_size=8, grad_accum=2), 8).grad_accum == 2  # agree
    with pytest.raises(ConfigError) as e:
        batch_plan(TrainConfig(global_batch_size=128, batch_size=8, grad_accum=4), 8)
    msg = str(e.value)
    assert "'train.global_batch_size' (128) and 'train.grad_accum' (4) disagree on 8 processes" in msg
    assert "= 2 accumulation steps" in msg and "Remove train.grad_accum" in msg


def test_a_run_refuses_a_global_batch_that_does_not_split_before_reading_data_or_model(tmp_path):
    cfg = load_config(base={"output_dir": str(tmp_path / "run"), "model": {"source": "llava", "path": "/nonexistent"},
                            "data": {"json": "/nonexistent.json"}, "train": {"global_batch_size": 12, "batch_size": 8}})
    from dualspeed.train.run import run

    with pytest.raises(ConfigError, match=r"'train.global_batch_size' is 12, which is not a multiple of "
                                          r"train.batch_size \(8\) x 1 process = 8"):
        run(cfg)  # neither the missing data file nor the missing checkpoint was reached


def test_the_7b_recipes_state_the_papers_global_batches():
    for name in ("llava15_7b.yaml", "llava_next_7b.yaml"):
        cfg = recipe(name)
        assert cfg["pretrain"]["train"]["global_batch_size"] == 256 and cfg["sft"]["train"]["global_batch_size"] == 128
        assert "grad_accum" not in cfg["pretrain"]["train"] and "grad_accum" not in cfg["sft"]["train"]
        text = (ROOT / "config" / name).read_text()
        assert "x 8 = " not in text  # no global batch multiplied out by hand for one GPU count


def test_the_plan_refuses_a_global_batch_that_does_not_split_over_the_training_job(tmp_path):
    cfg = recipe("llava15_7b.yaml")
    assert check(copy.deepcopy(cfg), SCHEMA)  # 8 GPUs: 256 = 32 x 8, 128 = 16 x 8
    two = copy.deepcopy(cfg)
    two["resources"]["train"]["nodes"] = 2
    with pytest.raises(PlanError) as e:
        check(copy.deepcopy(two), SCHEMA)
    assert str(e.value).startswith("pretrain.train: config key 'train.global_batch_size' is 256, which is not a "
                                   "multiple of train.batch_size (32) x 16 processes")
    assert "(resources.train: 8 GPUs x 2 nodes)" in str(e.value)
    two["pretrain"]["train"]["batch_size"] = 16
    two["sft"]["train"]["batch_size"] = 8
    assert check(two, SCHEMA)["resources"]["train"]["nodes"] == 2
    cfg["resources"]["eval"]["nodes"] = 2
    with pytest.raises(PlanError, match=r"'resources.eval.nodes' is 2; allowed: 1"):
        check(cfg, SCHEMA)


def shard(order, per_device, world, accum, skip_steps=0):
    """The samples each optimizer step trains, as accelerate deals per-device batches to ranks (BatchSamplerShard),
    the Trainer accumulates each rank's consecutive batches and, resuming, skips steps x accum of them per rank."""
    from accelerate.data_loader import BatchSamplerShard

    ranks = [list(BatchSamplerShard(BatchSampler(order, per_device, drop_last=False), world, r)) if world > 1
             else list(BatchSampler(order, per_device, drop_last=False)) for r in range(world)]
    ranks = [r[skip_steps * accum:] for r in ranks]
    steps = len(ranks[0]) // accum
    assert all(len(r) == steps * accum for r in ranks)
    return [sorted(i for r in ranks for b in r[s * accum:(s + 1) * accum] for i in b) for s in range(steps)]


SPLITS = [(8, 1, 1), (4, 1, 2), (4, 2, 1), (2, 2, 2), (2, 4, 1), (1, 8, 1)]  # per-device batch, processes, accum


@pytest.mark.parametrize("grouped", [False, True])
def test_every_split_of_a_global_batch_trains_the_same_samples_each_step(grouped):
    n, global_batch = 45, 8  # 45 is not a multiple of 8: the last step is filled up from the epoch's start
    lengths = [(i % 7 + 1) * (1 if i % 5 else -1) for i in range(n)] if grouped else None

    def steps(per_device, world, accum, skip_steps=0):
        order = list(GlobalBatchSampler(n, global_batch, per_device, seed=5, lengths=lengths))
        return shard(order, per_device, world, accum, skip_steps)

    first = steps(*SPLITS[0])
    assert len(first) == 6 and all(len(s) == global_batch for s in first)
    assert sorted({i for s in first for i in s}) == list(range(n))
    for split in SPLITS[1:]:
        assert steps(*split) == first, split
        # resumed after 2 steps on this split, whatever split trained them: the remaining steps, unchanged
        assert steps(*split, skip_steps=2) == first[2:], split


def test_a_single_process_keeps_the_order_accelerate_drew_before():
    from accelerate.data_loader import SeedableRandomSampler

    ours = list(GlobalBatchSampler(64, 16, 8, seed=3))
    theirs = SeedableRandomSampler(range(64), data_seed=3)
    assert ours == list(theirs)
    s = GlobalBatchSampler(64, 16, 8, seed=3)
    s.set_epoch(1)
    theirs.set_epoch(1)
    assert list(s) == list(theirs) != ours


def test_a_world_size_change_is_not_a_config_change_but_a_real_change_is():
    cfg = load_config(base={"output_dir": "x", "model": {"source": "llava", "path": "p"},
                            "train": {"global_batch_size": 16, "batch_size": 8}}).to_dict()
    split = copy.deepcopy(cfg)
    split["train"]["batch_size"] = 4  # a smaller per-device batch for smaller GPUs: the same global batch
    assert differing_keys(_comparable(cfg, split=False), _comparable(split, split=False)) == []
    lr = copy.deepcopy(cfg)
    lr["train"]["lr"] = 1.0
    assert differing_keys(_comparable(cfg, split=False), _comparable(lr, split=False)) == ["train.lr"]


def test_a_resolved_config_written_before_the_new_keys_still_matches():
    now = load_config(base={"output_dir": "x", "model": {"source": "llava", "path": "p"}}).to_dict()
    old = copy.deepcopy(now)
    for k in ("global_batch_size", "dist_timeout_s"):
        del old["train"][k]
    old["train"]["grad_accum"] = 1  # the old default
    assert differing_keys(_comparable(old), _comparable(now)) == []
    old["train"]["grad_accum"] = 2
    assert differing_keys(_comparable(old), _comparable(now)) == ["train.grad_accum"]


def checkpointed(tmp_path, trained: BatchPlan, **train) -> tuple:
    """A run directory as a killed job leaves it: its resolved config and a complete checkpoint that trained with
    `trained`; -> (the config to start again with, its directory)."""
    from dualspeed.config import dump_config
    from dualspeed.models.checkpoint import META_FILE
    from dualspeed.train.resume import checkpoint_meta

    out = tmp_path / "run"
    base = {"output_dir": str(out), "model": {"source": "llava", "path": "p"}}
    before = load_config(base={**base, "train": {"batch_size": trained.per_device, **train.pop("before", {})}})
    ckpt = out / "checkpoints" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    (ckpt / META_FILE).write_text(json.dumps(checkpoint_meta(trained)))
    dump_config(before, out / "config.resolved.yaml")
    return load_config(base={**base, "train": {"batch_size": trained.per_device, **train}}), out


def test_resume_keeps_the_global_batch_on_another_process_count(tmp_path):
    from dualspeed.train.resume import resume_point

    # grad_accum left derived: the checkpoint's global batch continues, on half the processes
    cfg, out = checkpointed(tmp_path, BatchPlan(16, 4, 2, 2))
    ckpt, plan = resume_point(cfg, out, write=True, world_size=1)
    assert ckpt.endswith("checkpoint-2") and plan == BatchPlan(16, 4, 4, 1)
    # with train.global_batch_size, on twice the processes, and with a smaller per-device batch
    cfg, out = checkpointed(tmp_path / "g", BatchPlan(16, 4, 2, 2), before={"global_batch_size": 16},
                            global_batch_size=16)
    ckpt, plan = resume_point(cfg, out, write=True, world_size=4)
    assert ckpt.endswith("checkpoint-2") and plan == BatchPlan(16, 4, 1, 4)


def test_resume_refuses_a_start_that_would_change_the_global_batch_on_another_process_count(tmp_path):
    from dualspeed.train.resume import resume_point

    cfg, out = checkpointed(tmp_path, BatchPlan(16, 4, 2, 2), before={"grad_accum": 2}, grad_accum=2)
    with pytest.raises(ConfigError) as e:
        resume_point(cfg, out, write=True, world_size=1)
    msg = str(e.value)
    assert "trained with a global batch of 16 (4 per device x 2 accumulation steps x 2 processes); this start gives " \
           "8 (4 per device x 2 accumulation steps x 1 processes)" in msg
    assert "Set train.global_batch_size=16" in msg and "resume on 2 processes" in msg
    assert (out / "checkpoints" / "checkpoint-2").is_dir()  # nothing removed
    # the fix the message names resumes the checkpoint
    cfg, _ = checkpointed(tmp_path / "fixed", BatchPlan(16, 4, 2, 2), before={"grad_accum": 2}, global_batch_size=16)
    ckpt, plan = resume_point(cfg, tmp_path / "fixed" / "run", write=True, world_size=1)
    assert ckpt.endswith("checkpoint-2") and plan == BatchPlan(16, 4, 4, 1)


def test_a_changed_batch_on_the_same_process_count_or_a_changed_setting_starts_over(tmp_path):
    from dualspeed.train.resume import resume_point

    cfg, out = checkpointed(tmp_path, BatchPlan(16, 4, 2, 2), before={"grad_accum": 2}, grad_accum=4)
    assert resume_point(cfg, out, write=True, world_size=2) == (None, BatchPlan(32, 4, 4, 2))
    assert not (out / "checkpoints").exists()
    cfg, out = checkpointed(tmp_path / "lr", BatchPlan(16, 4, 2, 2), before={"global_batch_size": 16},
                            global_batch_size=16, lr=1.0)
    assert resume_point(cfg, out, write=True, world_size=1) == (None, BatchPlan(16, 4, 4, 1))
    assert not (out / "checkpoints").exists()


def test_a_deepspeed_checkpoint_is_not_resumed_on_another_process_count(tmp_path):
    from dualspeed.train.resume import resume_point

    zero = {"deepspeed": "dualspeed/train/configs/zero3_noprefetch.json", "global_batch_size": 16}
    cfg, out = checkpointed(tmp_path, BatchPlan(16, 4, 2, 2), before=dict(zero), **zero)
    with pytest.raises(ConfigError, match=r"ZeRO optimizer state partitioned over 2 processes and this start has 4 "
                                          r"\(config key 'train.deepspeed'.*Resume on 2 processes"):
        resume_point(cfg, out, write=True, world_size=4)
    assert resume_point(cfg, out, write=True, world_size=2)[0].endswith("checkpoint-2")
