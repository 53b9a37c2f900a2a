#!/usr/bin/env bash
# Idempotent set-up: a virtual environment (default .venv, or $DUALSPEED_VENV) holding exactly
# requirements.lock, plus this package (editable). Run by scripts/run.sh and scripts/test.sh, so each
# README command works from a fresh clone. A changed lock (or this script) rebuilds the venv from empty,
# so nothing installed earlier survives, and ends by checking the venv against the lock; a changed
# pyproject.toml, or a venv whose editable package points at another checkout (a venv shared by two
# checkouts), reinstalls only this package, from this checkout.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DUALSPEED_VENV:-$root/.venv}"
lock="$root/requirements.lock"
stamp="$venv/.dualspeed-installed"        # the lock this venv holds
project_stamp="$venv/.dualspeed-project"  # the package metadata installed, and the checkout it points at
want="$(cat "$lock" "$root/scripts/setup.sh" | sha256sum | cut -d' ' -f1)"
want_project="$({ cat "$root/pyproject.toml"; echo "$root"; } | sha256sum | cut -d' ' -f1)"
if [[ "${1:-}" == "--print-stamp" ]]; then echo "$want"; exit 0; fi
pip() { "$venv/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
install_project() {  # editable: the checkout is the code; only its metadata is installed
  PYTHONWARNINGS=ignore pip install -q --no-deps --no-build-isolation -e "$root"
  echo "$want_project" > "$project_stamp"
}
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  if [[ ! -f "$project_stamp" || "$(cat "$project_stamp")" != "$want_project" ]]; then
    echo "[setup] pyproject.toml changed, or the venv's package is another checkout's: reinstalling the dualspeed" \
      "package from $root into $venv" >&2
    install_project
  fi
  exit 0
fi
if [[ -e "$venv" && ! -f "$stamp" && -n "$(ls -A "$venv" 2>/dev/null)" ]]; then
  echo "[setup] $venv exists and was not made by scripts/setup.sh; refusing to replace it." >&2
  echo "[setup] Point DUALSPEED_VENV at a new folder, or remove $venv." >&2
  exit 1
fi
t0=$SECONDS
echo "[setup] installing requirements.lock into $venv (first run: about 5 minutes, 7 GB)" >&2
python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
  echo "[setup] warning: the lock is made for Python 3.11; $(python3 --version) may not install it" >&2
python3 -m venv --clear "$venv"
# Part of the lock: the records whose package name is (or, with `-v`, is not) in the list.
lock_part() {
  awk -v names=" $2 " -v invert="$1" '
    /^[A-Za-z0-9]/ { split($1, a, "=="); hit = index(names, " " a[1] " ") > 0; keep = invert ? !hit : hit }
    keep' "$lock"
}
# Build tools first: deepspeed and this package are built against them, without isolation.
pip install -q --require-hashes --no-deps -r <(lock_part 0 "pip setuptools wheel")
# Everything else but deepspeed: its setup.py imports torch, so torch must be installed before it is built
# (an isolated build would fetch a second multi-GB torch).
pip install -q --require-hashes --no-deps -r <(lock_part 1 "pip setuptools wheel deepspeed")
DS_BUILD_OPS=0 pip install -q --require-hashes --no-deps --no-build-isolation -r <(lock_part 0 "deepspeed")
install_project
"$venv/bin/python" -m dualspeed.envlock
echo "$want" > "$stamp"
echo "[setup] done in $((SECONDS - t0)) s" >&2
