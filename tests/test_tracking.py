"""Experiment tracking: TensorBoard events with DualSpeed's per-mode scalars beside the Trainer's, and
steps.csv's LR columns holding the LR each group used in that step."""
import pytest

from dualspeed.config import ConfigError
from dualspeed.train.run import run
from test_train import read_steps, tiny_cfg  # tests/ is on sys.path (no package)


def test_tiny_run_writes_tensorboard_events_and_the_lr_each_step_used(synth_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    steps = 4
    run(tiny_cfg(synth_dir, out, **{"train.max_steps": steps, "train.report_to": "tensorboard",
                                    "train.scheduler": "linear", "train.logging_steps": 2,
                                    "fastslow.slow_prob": 0.5, "train.batch_size": 4}))
    events = list((out / "tb").rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard events under {out / 'tb'}"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate"} <= tags  # the Trainer's own
    assert {"train/visual_tokens", "train/slow_step_frac"} <= tags, tags
    assert tags & {"train/loss_fast", "train/loss_slow"}, tags
    rows = read_steps(out)
    if any(r["mode"] == "slow" for r in rows):
        assert {"train/kl", "train/teacher_ce", "train/student_ce"} <= tags, tags
    # two logs of two steps each; visual tokens are the mean of the rows steps.csv wrote for those steps
    vis = [e.value for e in acc.Scalars("train/visual_tokens")]
    assert len(vis) == steps // 2
    want = [sum(float(r["visual_tokens"]) for r in rows[i:i + 2]) / 2 for i in (0, 2)]
    assert vis == pytest.approx(want, rel=1e-6)
    # linear decay from the base LR, no warm-up: step k (1-based) used base * (1 - (k - 1) / steps)
    assert [int(r["step"]) for r in rows] == list(range(1, steps + 1))
    for k, r in enumerate(rows):
        factor = 1 - k / steps
        assert float(r["lr_llm"]) == pytest.approx(3e-3 * factor)
        assert float(r["lr_projector"]) == pytest.approx(1e-3 * factor)
        assert float(r["lr_isolator"]) == pytest.approx(1e-3 * factor)


def test_no_tracker_by_default_and_a_bad_one_names_the_key(synth_dir, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(synth_dir, out)
    assert cfg.train.report_to == "none"
    with pytest.raises(ConfigError, match="train.report_to.*none, tensorboard or wandb"):
        tiny_cfg(synth_dir, out, **{"train.report_to": "mlflow"})
