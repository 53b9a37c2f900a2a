"""scripts/run.sh keeps going past a failed job, lists each failed job with its log, and a rerun redoes only
what did not finish. Run on a three-job workflow of its own (one job fails), with the project's script."""
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = """
rule all:
    input: expand("out/{x}.txt", x=["a", "b", "c"])
rule make:
    output: "out/{x}.txt"
    log: "logs/{x}.log"
    shell: "if [ {wildcards.x} = b ] && [ ! -e fixed ]; then echo boom > {log}; exit 1; fi; echo ok > {output}"
"""


def test_run_script_keeps_going_lists_failures_and_reruns_only_the_failed(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts/run.sh").write_bytes((ROOT / "scripts/run.sh").read_bytes())
    (tmp_path / "scripts/setup.sh").write_text("exit 0\n")  # the environment is the one running this test
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    env = {**os.environ, "DUALSPEED_VENV": str(Path(os.sys.executable).parents[1])}
    first = subprocess.run(["bash", "scripts/run.sh", "--cores", "1"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode != 0
    assert (tmp_path / "out/a.txt").is_file() and (tmp_path / "out/c.txt").is_file()  # kept going past b
    assert "[run] failed jobs" in first.stderr and "  make: logs/b.log" in first.stderr
    done = {x: (tmp_path / f"out/{x}.txt").stat().st_mtime_ns for x in "ac"}
    (tmp_path / "fixed").touch()
    second = subprocess.run(["bash", "scripts/run.sh", "--cores", "1"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert {x: (tmp_path / f"out/{x}.txt").stat().st_mtime_ns for x in "ac"} == done  # finished jobs not rerun
    assert (tmp_path / "out/b.txt").is_file() and "failed jobs" not in second.stderr


def test_a_venv_shared_by_two_checkouts_points_at_the_one_that_last_set_it_up(tmp_path):
    """scripts/setup.sh stamps the package it installed with the checkout it points at: a venv shared by two
    checkouts is reinstalled (editable) from the one being set up, never left on the other's code. Run on a fake
    venv whose python records its calls, so nothing is installed."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    calls = tmp_path / "calls.log"
    (venv / "bin" / "python").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (venv / "bin" / "python").chmod(0o755)
    checkouts = []
    for name in ("one", "two"):
        co = tmp_path / name
        (co / "scripts").mkdir(parents=True)
        (co / "scripts/setup.sh").write_bytes((ROOT / "scripts/setup.sh").read_bytes())
        (co / "pyproject.toml").write_text("[project]\nname = 'dualspeed'\n")
        (co / "requirements.lock").write_text("# the same lock in both\n")
        checkouts.append(co)
    env = {**os.environ, "DUALSPEED_VENV": str(venv)}
    stamp = subprocess.run(["bash", "scripts/setup.sh", "--print-stamp"], cwd=checkouts[0], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    (venv / ".dualspeed-installed").write_text(stamp + "\n")  # the lock is installed: only the package is at stake

    def setup(co) -> list[str]:
        before = calls.read_text().splitlines() if calls.exists() else []
        subprocess.run(["bash", "scripts/setup.sh"], cwd=co, env=env, capture_output=True, text=True, check=True)
        return [line for line in calls.read_text().splitlines()[len(before):]] if calls.exists() else []

    first = setup(checkouts[0])
    assert len(first) == 1 and first[0].endswith(f"-e {checkouts[0]}"), first
    assert setup(checkouts[0]) == []  # set up already: nothing to do
    second = setup(checkouts[1])
    assert len(second) == 1 and second[0].endswith(f"-e {checkouts[1]}"), second
    assert setup(checkouts[1]) == []
    assert setup(checkouts[0])[0].endswith(f"-e {checkouts[0]}")
