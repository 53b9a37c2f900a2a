"""Training over several processes and nodes, on the CPU with gloo: two torchrun agents meeting on 127.0.0.1 as two
"nodes", one node with two processes and one process accumulating two micro-batches train the same global batch,
so they end with the same weights and steps.csv; a run resumes on half and twice the processes it started on; a
rank that dies or stalls ends every rank within a bound, named by the launcher. Each run is a few steps of the
tiny model on the synthetic data, one thread per process."""
import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from safetensors.torch import load_file

from dualspeed.config import load_config
from dualspeed.train.run import run

pytestmark = pytest.mark.slow

EXACT = ("step", "mode", "visual_tokens", "text_tokens", "samples")
LOSSES = ("loss", "teacher_ce", "student_ce", "kl")
TOL = 1e-6  # weights and logged losses; on this machine they agree bit for bit


@pytest.fixture(scope="module")
def pretrained(synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pre")
    run(load_config(base={
        "output_dir": str(out), "model": {"source": "tiny", "tokenizer": str(synth_dir / "tokenizer")},
        "data": {"json": str(synth_dir / "pretrain.json"), "image_folder": str(synth_dir), "template": "plain"},
        "train": {"stage": "pretrain", "llm": "frozen", "projector_lr": 1e-2, "isolator_lr": 1e-1, "batch_size": 8,
                  "max_steps": 3, "warmup_ratio": 0.0, "scheduler": "constant"},
        "fastslow": {"prune": True, "method": "divprune", "ratio": 0.9, "slow_prob": 0.0, "isolator": True}}))
    return out / "hf"


def spec(synth_dir, pretrained, out, **train) -> dict:
    """LLaVA-style SFT, fast and slow steps, modality-grouped batches of a global 8 = 4 per process x 2. Nothing
    random after the start (LoRA dropout 0, DivPrune), so any split of the batch can give the same numbers."""
    return {"output_dir": str(out), "model": {"source": "llava", "path": str(pretrained)},
            "data": {"json": str(synth_dir / "sft.json"), "image_folder": str(synth_dir)},
            "train": {"stage": "sft", "llm": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "lr": 3e-3,
                      "projector_lr": 1e-3, "isolator_lr": 1e-2, "global_batch_size": 8, "batch_size": 4,
                      "max_steps": 4, "save_steps": 2, "warmup_ratio": 0.0, "scheduler": "constant",
                      "group_by_modality_length": True, **train},
            "fastslow": {"prune": True, "method": "divprune", "ratio": 0.9, "slow_prob": 0.5, "isolator": True}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(how: str, spec_: dict, log: Path, tag: str = "") -> list[subprocess.Popen]:
    """single: python; standalone: torchrun --standalone, 2 processes; nodes: two launchers (dualspeed.launch),
    each a torchrun agent of one process, meeting on 127.0.0.1 as two nodes do at their first node."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "DUALSPEED_TEST_TAG": tag}
    train = ["-m", "dualspeed.train", "--spec", json.dumps(spec_)]
    if how == "single":
        cmds = [[sys.executable, *train]]
    elif how == "standalone":
        cmds = [[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *train]]
    else:
        env.update(DUALSPEED_NNODES="2", DUALSPEED_RDZV_ENDPOINT=f"127.0.0.1:{free_port()}",
                   DUALSPEED_RDZV_ID=uuid.uuid4().hex)
        cmds = [[sys.executable, "-m", "dualspeed.launch", "--nproc-per-node", "1", *train]] * 2
    return [subprocess.Popen(c, env=env, stdout=open(f"{log}.{i}", "w"), stderr=subprocess.STDOUT)
            for i, c in enumerate(cmds)]


def train(how: str, spec_: dict, log: Path) -> float:
    t0 = time.perf_counter()
    procs = start(how, spec_, log)
    rcs = [p.wait(timeout=600) for p in procs]
    wall = time.perf_counter() - t0
    assert rcs == [0] * len(procs), "\n".join(Path(f"{log}.{i}").read_text()[-3000:] for i in range(len(procs)))
    return wall


def steps(run_dir):
    with open(run_dir / "steps.csv") as f:
        return list(csv.DictReader(f))


def weights(run_dir):
    files = sorted((run_dir / "hf").glob("*.safetensors"))
    return {f"{f.name}:{k}": v for f in files for k, v in load_file(f).items()}


def differences(a, b) -> dict:
    """Max abs difference of the exported weights and of the logged losses; the exact columns must agree."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    sa, sb = steps(a), steps(b)
    assert [tuple(r[k] for k in EXACT) for r in sa] == [tuple(r[k] for k in EXACT) for r in sb]
    return {"weights": max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa),
            "losses": max(abs(float(x[k]) - float(y[k])) for x, y in zip(sa, sb) for k in LOSSES
                          if x[k] != "nan" or y[k] != "nan")}


@pytest.fixture(scope="module")
def runs(synth_dir, pretrained, tmp_path_factory):
    root = tmp_path_factory.mktemp("ranks")
    out, wall = {}, {}
    for name in ("standalone", "nodes", "single"):
        out[name] = root / name
        wall[name] = train(name, spec(synth_dir, pretrained, out[name]), root / f"{name}.log")
    print(f"\nwall time of 4 steps: {', '.join(f'{k} {v:.1f} s' for k, v in wall.items())}")
    return out


@pytest.mark.timeout(1200)
def test_two_nodes_two_processes_and_one_accumulating_end_with_the_same_weights_and_steps(runs):
    for name, accum, world in (("standalone", 1, 2), ("nodes", 1, 2), ("single", 2, 1)):
        timing = json.loads((runs[name] / "timing.json").read_text())
        batch = {"global_batch": 8, "per_device": 4, "grad_accum": accum, "world_size": world}
        assert timing["batch"] == batch and timing["world_size"] == world
        assert json.loads((runs[name] / "provenance.json").read_text())["batch"] == batch
        assert timing["samples"] == 4 * 8
    rows = steps(runs["single"])
    assert {r["mode"] for r in rows} == {"fast", "slow"}  # both modes ran
    for name in ("nodes", "single"):
        d = differences(runs["standalone"], runs[name])
        print(f"{name} vs standalone: max abs difference {d}")
        assert d["weights"] <= TOL and d["losses"] <= TOL, (name, d)


def cut_back(done: Path, to: Path) -> Path:
    """What a job killed after step 3 leaves of `done` (checkpoint-2, steps 1-4 logged, no export), as it would lie
    in `to`."""
    shutil.copytree(done, to)
    shutil.rmtree(to / "hf")
    shutil.rmtree(to / "checkpoints" / "checkpoint-4")
    (to / "timing.json").unlink()
    resolved = to / "config.resolved.yaml"
    resolved.write_text(resolved.read_text().replace(f"output_dir: {done}", f"output_dir: {to}"))
    return to


@pytest.mark.timeout(1200)
def test_a_run_resumes_on_half_and_twice_the_processes_with_the_same_global_batch(runs, synth_dir, pretrained,
                                                                                  tmp_path):
    for started, resumed, accum in (("standalone", "single", 2), ("single", "standalone", 1)):
        where = cut_back(runs[started], tmp_path / f"{started}-then-{resumed}")
        train(resumed, spec(synth_dir, pretrained, where), tmp_path / f"{started}-then-{resumed}.log")
        timing = json.loads((where / "timing.json").read_text())
        assert timing["resumed_from"] == str(where / "checkpoints" / "checkpoint-2") and timing["steps"] == 4
        assert timing["batch"]["global_batch"] == 8 and timing["batch"]["grad_accum"] == accum
        d = differences(runs[started], where)  # the uninterrupted run it started as
        print(f"{started} resumed as {resumed}: max abs difference {d}")
        assert d["weights"] <= TOL and d["losses"] <= TOL, (started, resumed, d)


def worker_pids(tag: str) -> dict[int, int]:
    """rank -> pid of the training processes started with DUALSPEED_TEST_TAG=tag."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = dict(v.split(b"=", 1) for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in v)
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if env.get(b"DUALSPEED_TEST_TAG") == tag.encode() and b"RANK" in env and b"torch.distributed.run" not in cmd:
            found[int(env[b"RANK"])] = int(pid)
    return found


def break_rank_one(how, sig, spec_, tmp_path) -> tuple[list[int], float, str]:
    """Start a long run, send `sig` to rank 1 once steps are logged; -> exit codes, seconds from the signal to the
    last launcher's exit, everything the launchers printed."""
    tag = uuid.uuid4().hex
    procs = start(how, spec_, tmp_path / "log", tag)
    log = Path(spec_["output_dir"]) / "steps.csv"
    deadline = time.time() + 300
    while not (log.is_file() and len(log.read_text().splitlines()) > 2):
        assert time.time() < deadline and all(p.poll() is None for p in procs), "the run did not start"
        time.sleep(0.2)
    ranks = worker_pids(tag)
    assert sorted(ranks) == [0, 1], ranks
    os.kill(ranks[1], sig)
    t0 = time.perf_counter()
    try:
        rcs = [p.wait(timeout=300) for p in procs]
    finally:
        for pid in worker_pids(tag).values():  # whatever a failed test would leave behind
            os.kill(pid, signal.SIGKILL)
    return rcs, time.perf_counter() - t0, "\n".join(Path(f"{tmp_path / 'log'}.{i}").read_text()
                                                    for i in range(len(procs)))


@pytest.mark.timeout(600)
def test_a_rank_that_dies_ends_every_node_within_seconds_naming_it(synth_dir, pretrained, tmp_path):
    rcs, after, out = break_rank_one("nodes", signal.SIGKILL, spec(synth_dir, pretrained, tmp_path / "run",
                                                                   max_steps=10_000, save_steps=10_000), tmp_path)
    print(f"a killed rank 1: the launchers exited {rcs} {after:.1f} s later")
    assert all(rc != 0 for rc in rcs) and after < 60, (rcs, after)
    # rank 1's node names it; rank 0's node fails on the lost peer at once, not after the process-group timeout
    assert "rank      : 1 (local_rank: 0)" in out and "Signal 9 (SIGKILL) received by PID" in out, out[-3000:]


@pytest.mark.timeout(600)
def test_a_rank_that_stalls_fails_the_run_after_the_process_group_timeout(synth_dir, pretrained, tmp_path):
    s = spec(synth_dir, pretrained, tmp_path / "run", max_steps=10_000, save_steps=10_000, dist_timeout_s=10)
    rcs, after, out = break_rank_one("standalone", signal.SIGSTOP, s, tmp_path)
    print(f"a stopped rank 1: the launcher exited {rcs} {after:.1f} s later")
    # rank 0 gives up after train.dist_timeout_s (torch's default would be 30 min), then torchrun ends the stopped
    # rank after its 30 s grace
    assert rcs[0] != 0 and 10 <= after < 120, (rcs, after)
    # gloo says "Timed out waiting 10000ms for send/recv" or "Application timeout caused pair closure"
    assert re.search(r"timed? ?out", out, re.I) and "rank      : 1 (local_rank: 1)" in out, out[-3000:]
