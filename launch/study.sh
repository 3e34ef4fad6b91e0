#!/usr/bin/env bash
# The study of docs/RESULTS.md: every run behind its tables and figures, then the figures.
# About 2 hours on 2 cores (1 h 58 min here). Runs go under study/ (or $1); installs what it
# needs like launch/test.sh.
#   accuracy/  bp K=1 and fr, ddg, dni at K=2,3,4, 3 seeds, 2 epochs (conf/experiment/study_fashion.yaml)
#   long/      bp K=1 and fr K=4 for 10 epochs
#   memory/    peak activation memory per stage of fr, ddg, gpipe at K=2,3,4 (20 steps)
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/install.sh
source launch/fashion_mnist.sh
export WANDB_MODE=${WANDB_MODE:-disabled}
OUT=${1:-study}
sweep() { dir=$1; shift; .venv/bin/python -m fr_dist.launch -m +experiment=study_fashion progress=false \
  hydra.sweep.dir="$OUT/$dir" "$@" || echo "[study] $dir: some points failed (see its results.md)"; }

for seed in 0 1 2; do
  sweep accuracy/seed$seed-bp seed=$seed algo=bp splits=1
  sweep accuracy/seed$seed-split seed=$seed algo=fr,ddg,dni splits=2,3,4
  if [ $seed = 0 ]; then
    sweep memory algo=fr,ddg,gpipe splits=2,3,4 max_steps=20 diag_every=0
    sweep long/bp algo=bp splits=1 epochs=10 diag_every=0
    sweep long/fr algo=fr splits=4 epochs=10
  fi
done
# the tables and figures of docs/RESULTS.md
.venv/bin/python -m fr_dist.plot "$OUT/accuracy" --out docs/accuracy
.venv/bin/python -m fr_dist.plot "$OUT/long" --out docs/long
.venv/bin/python -m fr_dist.plot "$OUT/memory"
