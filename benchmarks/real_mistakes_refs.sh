#!/usr/bin/env bash
# Which reference lets the Token Cleaning score find real reasoning errors? Warm-up references on the
# BIG-Bench Mistake pool of configs/real_mistakes_smollm2.yaml, 3 seeds each:
#   noisy: the run's own warm-up (split 0 of the pool, mistakes included; seed 0 is the run's stage)
#   clean: the same size (12 traces) of mistake-free traces outside the pool (a reference that knows the task)
# then both score splits 1 and 2 (the tokens fixed-model cleaning selects from) against the base.
# Needs: runs/bbmistake-data (tokenclean truth from-steps as in the config's header, but with --limit 30,6: the
# 36-trace pool docs/results.md measured this on) and runs/real-mistakes/seed_0
# (the run's data and warm-up stages), and runs/bbmistake-data/clean_warmup.jsonl.
# Analysis: python benchmarks/real_mistakes_analysis.py
set -euo pipefail
TC="python -m tokenclean"
R=runs/real-mistakes/seed_0
A=runs/rm-refs
TRAIN=(--model smollm2 --lora-r 16 --lora-alpha 32 --lora-dropout 0.05 --lr 0.001 --epochs 2 --batch-size 4
       --grad-accum 1 --max-length 320 --bf16 --save-steps 10 --threads 1 --quiet)
mkdir -p $A
$TC prepare --data runs/bbmistake-data/clean_warmup.jsonl --tokenizer smollm2 --out $A/clean_data \
    --template tulu --max-length 320
score() {  # $1 adapter, $2 name
  for k in 1 2; do
    $TC score --data $R/data/split_$k --base smollm2 --reference "$1" --out $A/scores_$2_split$k \
        --threads 1 --batch-tokens 4096 --no-progress
  done
}
stream_noisy() {
  score $R/warmup/adapter noisy_s0
  for s in 1 2; do
    $TC train --data $R/data/split_0 --out $A/warm_noisy_s$s --seed $s "${TRAIN[@]}"
    score $A/warm_noisy_s$s/adapter noisy_s$s
  done
}
stream_clean() {
  for s in 0 1 2; do
    $TC train --data $A/clean_data --out $A/warm_clean_s$s --seed $s "${TRAIN[@]}"
    score $A/warm_clean_s$s/adapter clean_s$s
  done
}
stream_noisy > $A/noisy.log 2>&1 &
p1=$!
stream_clean > $A/clean.log 2>&1 &
p2=$!
wait $p1 $p2
