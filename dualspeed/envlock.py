"""The locked environment: what requirements.lock pins, and how the running interpreter differs from it.

`python -m dualspeed.envlock` prints every difference and exits 1 if there is one; scripts/setup.sh runs
it after installing, the tests run it on the environment they run in, and every run's provenance.json
records the lock's hash and the differences, so a result produced off the lock says so.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import re
import sys
import sysconfig
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"
# The package itself is installed from the checkout, not from the lock.
SELF = {"dualspeed"}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def normalize(name: str) -> str:
    """PEP 503: `Foo_Bar.baz` and `foo-bar-baz` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """{normalized name: version} of every pin in a pip requirements lock (hash lines skipped)."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        m = _PIN.match(line)
        if m:
            pins[normalize(m.group(1))] = m.group(2)
    if not pins:
        raise ValueError(f"{path} holds no `name==version` pins; regenerate it with `bash scripts/lock.sh`")
    return pins


def installed() -> dict[str, str]:
    """The distributions installed in this environment's site-packages. Only there: setuptools, once imported,
    puts its vendored copies (jaraco, zipp, ...) on sys.path, and they are not installed packages."""
    where = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    out = {}
    for dist in importlib.metadata.distributions(path=where):
        name = dist.metadata["Name"]
        if name:
            out.setdefault(normalize(name), dist.version)
    return out


def differences(lock: dict[str, str] | None = None, have: dict[str, str] | None = None) -> list[str]:
    """One line per package whose installed version is not the locked one, is missing, or is not in the lock."""
    lock = read_lock() if lock is None else lock
    have = installed() if have is None else have
    out = []
    for name in sorted(set(lock) | set(have)):
        if name in SELF:
            continue
        want, got = lock.get(name), have.get(name)
        if want is None:
            out.append(f"{name} {got} is installed but not in the lock")
        elif got is None:
            out.append(f"{name} {want} is locked but not installed")
        elif got != want:
            out.append(f"{name} is {got}, the lock says {want}")
    return out


def lock_hash(path: Path = LOCK) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def provenance() -> dict:
    """The lock's hash and the installed packages that differ from it (empty when the environment is the lock)."""
    if not LOCK.exists():
        return {"lock": None, "note": f"{LOCK} not found (not an install from the checkout)"}
    return {"lock": str(LOCK.name), "lock_sha256": lock_hash(), "differs": differences()}


def main(argv: list[str] | None = None) -> int:
    diffs = differences()
    if diffs:
        print(f"The environment at {sys.prefix} differs from {LOCK} in {len(diffs)} package(s):", file=sys.stderr)
        for d in diffs:
            print(f"  {d}", file=sys.stderr)
        print("Fix: `bash scripts/setup.sh` reinstalls the lock into a fresh venv "
              "(a venv of your own: DUALSPEED_VENV=/path bash scripts/setup.sh).", file=sys.stderr)
        return 1
    print(f"{sys.prefix}: {len(read_lock())} packages, exactly {LOCK.name} (sha256 {lock_hash()[:12]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
