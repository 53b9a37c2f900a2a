"""Evaluation through lmms-eval: the entry-point model, offline, in the three inference modes."""
import json
import os
import subprocess
import sys

import pytest

from dualspeed.evaluation.predictor import Predictor, Query
from dualspeed.data.synth_tasks import write_tasks
from dualspeed.data.synth_tasks import TASKS


@pytest.fixture(scope="module")
def ckpt(synth_dir, tmp_path_factory):
    from test_train import tiny_cfg  # tests/ is on sys.path (no package)
    from dualspeed.train.run import run

    out = tmp_path_factory.mktemp("lmms_ckpt")
    run(tiny_cfg(synth_dir, out, **{"train.max_steps": 3}))
    return out / "hf"


def lmms_run(ckpt, synth_dir, out, mode, tasks="synth_count,synth_presence", extra=()):
    write_tasks(synth_dir, TASKS)
    cmd = [sys.executable, "-m", "dualspeed.evaluation.lmms", "--ckpt", str(ckpt), "--mode", mode, "--tasks", tasks,
           "--include-path", str(synth_dir / "lmms_tasks"), "--batch-size", "4", "--limit", "6", "--out", str(out),
           *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_three_modes_through_the_lmms_eval_cli_in_one_process(ckpt, synth_dir, tmp_path):
    res = lmms_run(ckpt, synth_dir, tmp_path / "{mode}.json", "normal,pruned,pruned_noiso")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    seen = {}
    for mode in ("normal", "pruned", "pruned_noiso"):
        m = json.loads((tmp_path / f"{mode}.json").read_text())
        assert m["backend"] == "lmms_eval" and m["mode"] == mode and set(m["scores"]) == {"synth_count", "synth_presence"}
        assert all(0 <= v <= 100 for v in m["scores"].values())
        assert m["samples_per_s"] > 0 and "same_as" not in m  # the run trained an isolator: three evaluations
        assert list((tmp_path / f"{mode}_raw").rglob("*_results.json"))  # raw outputs kept beside
        seen[mode] = m["visual_tokens_per_sample"]
    # 64 tokens normally; k = 6 kept (+ l = 4 isolator tokens) when pruned
    assert seen == {"normal": 64, "pruned": 10, "pruned_noiso": 6}
    # one process: the same scores as a job of its own for one mode
    alone = lmms_run(ckpt, synth_dir, tmp_path / "alone.json", "pruned")
    assert alone.returncode == 0, alone.stdout[-3000:] + alone.stderr[-3000:]
    assert json.loads((tmp_path / "alone.json").read_text())["scores"] == json.loads(
        (tmp_path / "pruned.json").read_text())["scores"]


def test_modes_that_are_one_computation_are_evaluated_once():
    from dualspeed.evaluation.predictor import mode_plan

    iso = {"fastslow": {"prune": True, "isolator": True}}
    plain = {"fastslow": {"prune": True, "isolator": False}}
    everything = ["pruned_noiso", "normal", "pruned"]
    assert mode_plan(iso, everything) == [("normal", None), ("pruned", None), ("pruned_noiso", None)]
    assert mode_plan(plain, everything) == [("normal", None), ("pruned", None), ("pruned_noiso", "pruned")]
    assert mode_plan(plain, ["pruned_noiso"]) == [("pruned_noiso", None)]
    with pytest.raises(ValueError, match="bogus"):
        mode_plan(iso, ["bogus"])


def test_several_modes_need_a_mode_template(ckpt, synth_dir, tmp_path):
    res = lmms_run(ckpt, synth_dir, tmp_path / "one.json", "normal,pruned")
    assert res.returncode != 0 and "{mode}" in res.stdout + res.stderr


def test_unknown_task_and_missing_checkpoint_fail_clearly(ckpt, synth_dir, tmp_path):
    res = lmms_run(ckpt, synth_dir, tmp_path / "x.json", "normal", tasks="synth_nonexistent")
    assert res.returncode != 0 and "synth_nonexistent" in res.stdout + res.stderr
    res = lmms_run(tmp_path / "nope", synth_dir, tmp_path / "y.json", "normal")
    assert res.returncode != 0 and "no checkpoint" in res.stdout + res.stderr


def test_scores_are_deterministic(ckpt, synth_dir):
    rows = json.loads((synth_dir / "eval_count.json").read_text())[:8]
    qs = [Query(r["question"], synth_dir / r["image"]) for r in rows]
    a = Predictor(ckpt, mode="pruned", batch_size=3).predict(qs)
    b = Predictor(ckpt, mode="pruned", batch_size=5).predict(qs)
    assert a == b


def test_pruned_inference_feeds_k_plus_l_tokens(ckpt, synth_dir):
    p = Predictor(ckpt, mode="pruned", method="divprune", ratio=0.75)
    p.predict([Query("How many objects are there ?", synth_dir / json.loads(
        (synth_dir / "eval_count.json").read_text())[0]["image"])])
    assert p.summary()["visual_tokens_per_sample"] == 16 + 4


def test_loglikelihood_is_a_loss_whose_argmin_is_the_greedy_answer(ckpt):
    """lmms-eval 0.7.3 picks multiple-choice answers by argmin: the scorer must return NLL, not log-prob."""
    p = Predictor(ckpt)
    q = Query("Is red a colour ?")
    words = [w for w in p.tokenizer.get_vocab() if w != "<image>"]  # every single-token continuation
    scored = {w: p.score(q, w) for w in words}
    assert all(nll > 0 for nll, _ in scored.values())
    best = min(scored, key=lambda w: scored[w][0])
    assert scored[best][1] is True
    assert sum(greedy for _, greedy in scored.values()) == 1


@pytest.fixture(scope="module")
def baseline_ckpt(synth_dir, tmp_path_factory):
    from test_train import tiny_cfg
    from dualspeed.train.run import run

    out = tmp_path_factory.mktemp("baseline_ckpt")
    run(tiny_cfg(synth_dir, out, **{"train.max_steps": 2, "fastslow.prune": "false"}))
    return out / "hf"


@pytest.mark.parametrize("args, says", [
    # a run that never pruned has no p of its own: "pruned" would silently be normal inference (issue 33)
    ([], "was trained without pruning, so it has no p of its own"),
    (["--ratio", "1.5"], "--ratio 1.5: p, the fraction of visual tokens pruned, must be in [0, 1)"),
    (["--ratio", "0.9", "--method", "visionzip:dominant=99"], "dominant=99 dominant tokens do not fit in the k=6 "
                                                             "tokens a crop keeps"),
    (["--ratio", "0.9", "--method", "nosuch"], "unknown VTP method 'nosuch'"),
])
@pytest.mark.parametrize("cli", ["dualspeed.evaluation", "dualspeed.evaluation.lmms"])
def test_pruned_modes_are_checked_before_the_checkpoint_loads(baseline_ckpt, synth_dir, tmp_path, cli, args, says):
    cmd = [sys.executable, "-X", "importtime", "-m", cli, "--ckpt", str(baseline_ckpt), "--mode", "normal,pruned",
           "--tasks", "synth_count", "--out", str(tmp_path / "{mode}.json"), *args]
    if cli == "dualspeed.evaluation":
        cmd += ["--data", str(synth_dir)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2 and says in res.stderr, res.stderr[-2000:]
    assert "transformers.models.llava.modeling_llava" not in res.stderr  # refused before any model was loaded
    assert not list(tmp_path.iterdir())


def test_a_predictor_refuses_pruned_inference_without_a_p_on_a_run_that_never_pruned(baseline_ckpt):
    with pytest.raises(ValueError, match="was trained without pruning"):
        Predictor(baseline_ckpt, mode="pruned")
    p = Predictor(baseline_ckpt, mode="pruned", ratio=0.75)
    assert (p.prune.method, p.prune.ratio) == ("divprune", 0.75)


def test_each_task_folder_is_indexed_once_per_process(synth_dir, monkeypatch):
    from lmms_eval.tasks import TaskManager

    from dualspeed.evaluation.lmms import run as lmms_cli

    write_tasks(synth_dir, TASKS)
    folder = str(synth_dir / "lmms_tasks")
    reference = TaskManager(include_path=folder)._task_index  # lmms-eval's own index, built as it builds it
    walked = []
    original = TaskManager._get_task_and_group

    def counting(self, task_dir):
        walked.append(task_dir)
        return original(self, task_dir)

    monkeypatch.setattr(TaskManager, "_get_task_and_group", counting)
    monkeypatch.setattr(TaskManager, "_dualspeed_memo", None, raising=False)
    lmms_cli._index_each_folder_once()
    first, second = TaskManager(include_path=folder), TaskManager(include_path=folder)  # two modes of one job
    assert first._task_index == second._task_index == reference
    assert len(walked) == 2 and walked[1] == folder  # lmms-eval's own tasks, then ours: once each
    first._task_index["synth_count"]["type"] = "edited"  # one manager's edit does not reach the next
    assert TaskManager(include_path=folder)._task_index == reference
