"""Every job's command runs the interpreter that runs the workflow (sys.executable), never `python`, `torchrun` or
`srun ... python` from PATH: planned with a PATH that holds no venv, the first job once got the system Python."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = shlex.quote(sys.executable)


def planned_commands(*args) -> list[str]:
    # PATH without the venv: what a user has who runs .venv/bin/snakemake without activating the venv
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--forceall", "--cores", "2", *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    cmds = [c for c in re.findall(r"^Shell command: (.*)$", res.stdout + res.stderr, re.M) if c != "None"]
    assert cmds
    return cmds


def program(cmd: str) -> list[str]:
    """The command's words after its leading VAR=value assignments."""
    words = shlex.split(cmd.split(" > ")[0])
    while words and re.match(r"^[A-Z_]+=", words[0]):
        words.pop(0)
    return words


@pytest.mark.parametrize("args", [
    [],  # the tiny default: synthesize, stand-ins, training, evaluation, tables, figures
    ["--configfile", "config/llava15_7b.yaml"],  # downloads, 8-GPU training (torch.distributed.run)
    ["--configfile", "config/llava15_7b.yaml", "--config", "resources={train: {nodes: 2}}",
     "pretrain={train: {batch_size: 16}}", "sft={train: {batch_size: 8}}"],  # srun over two nodes
], ids=["tiny", "llava15-8gpu", "llava15-2nodes"])
def test_every_rule_runs_the_workflows_interpreter(args):
    kinds = set()
    for cmd in planned_commands(*args):
        words = program(cmd)
        assert "torchrun" not in words and "python" not in words and "python3" not in words, cmd
        if words[0] == "srun":  # one task per node, each this interpreter's launcher
            i = words.index("dualspeed.launch")
            assert words[i - 2:i] == [sys.executable, "-m"], cmd
            kinds.add("srun")
            continue
        assert words[:2] == [sys.executable, "-m"], cmd
        kinds.add(words[2])
    if args and "nodes: 2" in " ".join(args):
        assert "srun" in kinds
    elif args:
        assert "torch.distributed.run" in kinds  # 8 GPUs on one node: torchrun, as this interpreter's module
    else:
        assert {"dualspeed.data", "dualspeed.train.standin", "dualspeed.train", "dualspeed.report.tables"} <= kinds
