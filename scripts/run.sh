#!/usr/bin/env bash
# The main job: set up (idempotent) and run the whole paper grid on the embedded tiny default.
# Extra arguments go to snakemake, e.g. `bash scripts/run.sh results/tables/ablation.md`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
export PATH="$root/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
cd "$root"
exec snakemake --cores all "$@"
