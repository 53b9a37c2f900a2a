"""Fetch real-scale data with resume and verification (used by workflow/rules/data.smk only).

    python -m dualspeed.data fetch file --entry '<json>' --stamp resources/downloads/x.ok
    python -m dualspeed.data fetch benchmark --entry gqa --cache resources/hf_home --stamp resources/benchmarks/gqa.ok
"""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path) -> None:
    """HTTP download that resumes a partial file (dest.part) with a Range request."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(req, timeout=60) as r:
        if have and r.status != 206:  # server ignored the range: start over
            have = 0
        total = int(r.headers.get("Content-Length", 0)) + have
        with part.open("ab" if have else "wb") as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                           desc=dest.name) as bar:
            for block in iter(lambda: r.read(1 << 20), b""):
                f.write(block)
                bar.update(len(block))
    part.replace(dest)


def verify(dest: Path, entry: dict, stamp: Path) -> dict:
    size = dest.stat().st_size
    if entry.get("size") and size != entry["size"]:
        raise SystemExit(f"{dest}: size {size} != expected {entry['size']}; delete it and re-run")
    digest = sha256(dest)
    pin = dest.with_name(dest.name + ".sha256")  # beside the file: Snakemake deletes a rule's outputs on rerun
    pinned = entry.get("sha256") or (pin.read_text().strip() if pin.exists() else None)
    if pinned and digest != pinned:
        raise SystemExit(f"{dest}: sha256 {digest} != expected {pinned}; delete it and re-run")
    if not pinned:
        pin.write_text(digest + "\n")  # trust on first download, verify ever after
    return {"size": size, "sha256": digest}


def fetch_file(entry: dict, stamp: Path) -> None:
    dest = Path(entry["dest"])
    if not dest.exists():
        download(entry["url"], dest)
    info = {"url": entry["url"], **verify(dest, entry, stamp)}
    if entry.get("unzip_to"):
        with zipfile.ZipFile(dest) as z:
            z.extractall(entry["unzip_to"])
        info["unzipped_to"] = entry["unzip_to"]
    if entry.get("untar_to"):
        with tarfile.open(dest) as t:
            t.extractall(entry["untar_to"], filter="data")  # refuses absolute paths and links out of the folder
        info["untarred_to"] = entry["untar_to"]
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(info, indent=2))


def fetch_benchmark(task: str, cache: Path, stamp: Path) -> None:
    """Hydrate the HF cache under `cache` with what lmms-eval task `task` reads, for offline runs later."""
    import subprocess
    import sys

    env = {**os.environ, "HF_HOME": str(cache.resolve())}
    out = stamp.parent / f"{task}_hydrate"
    cmd = [sys.executable, "-m", "lmms_eval", "eval", "--model", "dummy", "--tasks", task, "--limit", "1",
           "--output_path", str(out)]
    if subprocess.run(cmd, env=env).returncode != 0:
        raise SystemExit(f"lmms-eval could not load task '{task}'; see the log above")
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"task": task, "hf_home": str(cache)}, indent=2))


def add_arguments(ap) -> None:
    ap.add_argument("what", choices=["file", "benchmark"])
    ap.add_argument("--entry", required=True, help="the manifest entry as JSON (file) or the task name (benchmark)")
    ap.add_argument("--stamp", required=True, type=Path)
    ap.add_argument("--cache", type=Path, default=Path("resources/hf_home"))


def command(a) -> int:
    if a.what == "file":
        fetch_file(json.loads(a.entry), a.stamp)
    else:
        fetch_benchmark(a.entry, a.cache, a.stamp)
    return 0
