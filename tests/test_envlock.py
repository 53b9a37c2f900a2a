"""The environment is the lock: every installed distribution at the locked version, nothing missing, nothing
extra. CI on a machine that kept an older environment fails here, naming each difference."""
import json
import re
import subprocess
import tomllib
from pathlib import Path

from dualspeed import envlock, provenance

ROOT = Path(__file__).resolve().parents[1]


def test_the_running_environment_is_exactly_the_lock():
    diffs = envlock.differences()
    assert not diffs, ("the environment differs from requirements.lock (run `bash scripts/setup.sh`, which "
                       "rebuilds the venv when the lock changes):\n  " + "\n  ".join(diffs))


def test_only_installed_packages_count_not_what_setuptools_vendors(monkeypatch):
    import setuptools

    # what a process that imported setuptools' vendored packages has on sys.path (seen in an lmms-eval job)
    monkeypatch.syspath_prepend(str(Path(setuptools.__file__).parent / "_vendor"))
    assert not envlock.differences()


def test_differences_name_each_package_and_version():
    lock = {"filelock": "4.2.12", "torch": "2.14.1", "numpy": "2.4.6"}
    have = {"filelock": "4.3.1", "torch": "2.14.1", "ipython": "9.0", "dualspeed": "0.1.0"}
    assert envlock.differences(lock, have) == [
        "filelock is 4.3.1, the lock says 4.2.12",
        "ipython 9.0 is installed but not in the lock",
        "numpy 2.4.6 is locked but not installed",
    ]


def test_the_lock_pins_every_record_with_hashes_and_covers_the_declared_dependencies():
    records, pins = [], envlock.read_lock()
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line[:1].isalnum():
            records.append(line)
        elif records and "--hash=sha256:" in line:
            records[-1] += " hashed"
    assert len(records) == len(pins) > 150
    assert not [r for r in records if not r.endswith("hashed")], "records without a hash"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"] + project["optional-dependencies"]["dev"]:
        name = envlock.normalize(re.match(r"[A-Za-z0-9._-]+", dep).group(0))
        assert name in pins, f"pyproject.toml declares {dep} but requirements.lock does not pin it (bash scripts/lock.sh)"


def test_the_setup_stamp_covers_the_lock(tmp_path):
    """A changed lock changes the stamp, so scripts/setup.sh reinstalls instead of keeping the old venv."""
    def stamp(lock_text):
        root = tmp_path / str(abs(hash(lock_text)))
        (root / "scripts").mkdir(parents=True)
        for f in ("pyproject.toml", "scripts/setup.sh"):
            (root / f).write_bytes((ROOT / f).read_bytes())
        (root / "requirements.lock").write_text(lock_text)
        out = subprocess.run(["bash", str(root / "scripts/setup.sh"), "--print-stamp"], capture_output=True, text=True,
                             check=True)
        return out.stdout.strip()

    lock = (ROOT / "requirements.lock").read_text()
    assert stamp(lock) != stamp(lock.replace("filelock==4.2.12", "filelock==4.3.1")) != ""


def test_provenance_records_the_lock_hash_and_the_differences():
    env = provenance.collect()["environment"]
    assert env["lock_sha256"] == envlock.lock_hash() and env["differs"] == envlock.differences()
    json.dumps(env)


def test_the_check_command_exits_nonzero_naming_the_difference(monkeypatch, capsys):
    monkeypatch.setattr(envlock, "read_lock", lambda path=envlock.LOCK: {**envlock.installed(), "filelock": "0.0.1"})
    assert envlock.main([]) == 1
    assert "filelock is " in capsys.readouterr().err
