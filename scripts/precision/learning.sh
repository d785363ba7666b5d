#!/usr/bin/env bash
# Does bf16 change what FQL and QAM learn? Issue 31's comparison, as docs/precision.md reports it:
# cube-single task1 on generated play data (the demo's 50 episodes of 1000 steps), 3 x 256 networks,
# 2 critics, batch 256, 10 flow steps, 15,000 updates (compiled), 50 evaluation episodes every 5,000;
# FQL with seeds 0-4 and QAM with seeds 0-2, each in fp32 and in bf16 (which needs bfloat16 units).
# About 2 hours of one core per precision on the AMD EPYC of docs/precision.md; JOBS runs at once.
# usage: scripts/precision/learning.sh [OUT (default results)] [JOBS (default 2)]
set -euo pipefail
OUT=${1:-results}
JOBS=${2:-2}
DATA=data/demo
flowarena datagen --env cube-single-v0 --episodes 50 --episode-length 1000 --workers 2 --out "$DATA"
COMMON=(--suite demo --tasks cube-single-play-singletask-task1-v0 --dataset-dir "$DATA" --out "$OUT" --name precision
  --set hidden_dims=256,256,256 --set num_critics=2 --set batch_size=256 --set flow_steps=10
  --offline-steps 15000 --eval-interval 5000 --eval-episodes 50 --compile on --jobs "$JOBS")
for precision in fp32 bf16; do
  flowarena sweep "${COMMON[@]}" --methods fql --seeds 5 --precision "$precision"
  flowarena sweep "${COMMON[@]}" --methods qam --seeds 3 --precision "$precision"
done
flowarena collect "$OUT/precision"
V="[batch_size=256,flow_steps=10,hidden_dims=256x256x256,num_critics=2]"
for method in fql qam; do
  for step in 5000 10000 15000; do
    flowarena compare "$OUT/precision" "$method$V" "$method$V@bf16" --step "$step"
  done
done
python scripts/precision/curves.py "$OUT/precision" "$OUT/precision/curves.png"   # docs/precision_curves.png
flowarena report "$OUT/precision" --out "$OUT/precision/report"   # the whole report, also its curves
