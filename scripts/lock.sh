#!/usr/bin/env bash
# Regenerate requirements.lock: every package, transitive ones included, at an exact version with its
# hashes, for CPython 3.11 on Linux x86-64 (the CUDA-built torch wheels from PyPI; they run on a CPU too).
# Run it after changing a dependency in pyproject.toml or scripts/lock-tools.in; add `--upgrade` (or
# `--upgrade-package NAME`) to move pins that still satisfy pyproject.toml. Everything else keeps its pin.
# Then run `bash scripts/test.sh`: the set-up reinstalls from the new lock and the tests check it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
uv_version=0.13.9
uv="$(command -v uv || true)"
if [[ -z "$uv" || "$("$uv" --version | cut -d' ' -f2)" != "$uv_version" ]]; then
  tools="${TMPDIR:-/tmp}/dualspeed-uv-$uv_version"
  [[ -x "$tools/bin/uv" ]] || { python3 -m venv "$tools" && "$tools/bin/python" -m pip install -q "uv==$uv_version"; }
  uv="$tools/bin/uv"
fi
cd "$root"
exec "$uv" pip compile pyproject.toml scripts/lock-tools.in --extra dev \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --generate-hashes --custom-compile-command "bash scripts/lock.sh" --output-file requirements.lock "$@"
