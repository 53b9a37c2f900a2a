#!/usr/bin/env bash
# The main job: set up (idempotent) and run the whole paper grid on the embedded tiny default.
# Extra arguments go to snakemake, e.g. `bash scripts/run.sh results/tables/ablation.md`.
# A failed job does not stop the others (--keep-going); the run ends by listing each failed job and its
# log. Run the same command again after a fix: finished jobs are kept, interrupted ones redone.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh" || exit
export PATH="${DUALSPEED_VENV:-$root/.venv}/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
cd "$root"
snakemake --cores all --keep-going --rerun-incomplete "$@"
status=$?
if (( status )); then
  log="$(ls -t .snakemake/log/*.snakemake.log 2>/dev/null | head -1)"
  if [[ -n "$log" ]] && grep -q "^Error in rule " "$log"; then
    echo "[run] failed jobs (each job's own log; Snakemake's: $log):" >&2
    awk '/^Error in rule /{ if (r) print "  " r; r = $4; sub(/:$/, "", r) }
         r && /^ +log: /{ sub(/^ +log: /, ""); sub(/ \(check log.*$/, ""); print "  " r ": " $0; r = "" }
         END { if (r) print "  " r }' "$log" >&2
    echo "[run] fix the cause and rerun the same command: finished jobs are not rerun" >&2
  fi
fi
exit $status
