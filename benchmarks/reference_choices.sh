#!/usr/bin/env bash
# Measure the reference choices of configs/reference_choices.yaml: seed 0 of every choice first, then seed 1
# (a finished seed is reused), so an interrupted measurement still covers every choice.
# Usage: nice -n 10 bash benchmarks/reference_choices.sh [OUT=runs/ref]
set -uo pipefail
out=${1:-runs/ref}
mkdir -p "$out"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
declare -A extra=(
  [a]=""
  [b]="warmup.data=synthetic:clean"
  [c]="warmup.cross_fit=2"
  [e]="warmup.epochs=10"
)
for seeds in "[0]" "[0,1]"; do
  for c in a b c e; do
    echo "=== choice $c seeds $seeds $(date -u +%T) load: $(cut -d' ' -f1-3 /proc/loadavg)"
    # shellcheck disable=SC2086
    tokenclean run configs/reference_choices.yaml "run_dir=$out/$c" "seeds=$seeds" ${extra[$c]} > "$out/$c.log" 2>&1 || echo "FAILED: choice $c"
    tail -n 30 "$out/$c.log"
  done
done
echo "=== done $(date -u +%T) load: $(cut -d' ' -f1-3 /proc/loadavg)"
