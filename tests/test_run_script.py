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
