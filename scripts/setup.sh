#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with the pinned stack and this package.
# Sourced by scripts/run.sh and scripts/test.sh, so each README command works from a fresh clone.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DUALSPEED_VENV:-$root/.venv}"
stamp="$venv/.dualspeed-installed"
# Re-install only when the pinned requirements change.
want="$(cat "$root/pyproject.toml" "$root/scripts/setup.sh" | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
echo "[setup] installing the pinned stack into $venv (first run: about 5 minutes, 7 GB)" >&2
python3 -m venv "$venv"
pip() { "$venv/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
pip install -q --upgrade pip setuptools wheel "packaging>=24,<26"  # snakemake 9 needs packaging<26
# torch first: deepspeed's setup.py imports it, so deepspeed is built without isolation
# (an isolated build env would pull a second multi-GB torch).
pip install -q torch==2.14.1 torchvision==0.29.1
DS_BUILD_OPS=0 pip install -q --no-build-isolation deepspeed==0.19.8
pip install -q -e "$root[dev]"
echo "$want" > "$stamp"
echo "[setup] done" >&2
