#!/usr/bin/env bash
# Build the side venv for the reference code (default /work/xvenv or $CROSSCHECK_VENV): idempotent.
# Only the golden-file generators run in it; CI compares against tests/golden/ without it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${CROSSCHECK_VENV:-$here/../../.crosscheck-venv}"
want="$(cat "$here/requirements.txt" | sha256sum | cut -d' ' -f1)"
if [[ -f "$venv/.stamp" && "$(cat "$venv/.stamp")" == "$want" ]]; then echo "$venv"; exit 0; fi
python3 -m venv --clear "$venv"
"$venv/bin/pip" install -q -r "$here/requirements.txt"
"$venv/bin/pip" install -q --no-deps llava-torch==1.2.2.post1
echo "$want" > "$venv/.stamp"
echo "$venv"
