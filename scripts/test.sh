#!/usr/bin/env bash
# The test command: set up (idempotent) and run the whole test suite on the CPU.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
export PATH="${DUALSPEED_VENV:-$root/.venv}/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
cd "$root"
exec python -m pytest "$@"
