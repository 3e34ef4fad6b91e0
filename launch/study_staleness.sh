#!/usr/bin/env bash
# The staleness-compensation study of docs/RESULTS.md (issue 16, part 2): ResNet-8 on
# Fashion-MNIST, 2 epochs (conf/experiment/study_fashion.yaml), every point one sweep point.
# About 2 hours on 2 cores. Runs go under study/staleness (or $1); a rerun skips the points
# that finished and resumes the interrupted ones, so the script can be stopped and restarted.
#   seed<N>-bp      bp K=1
#   seed<N>-split   fr and ddg at K=2,3,4
#   seed<N>-wp      fr with weight prediction at K=2,3,4
#   seed<N>-wp-spike fr with weight prediction and spike compensation at K=2,3,4
#   long/           fr K=4 with weight prediction, 10 epochs (bp and plain fr: launch/study.sh)
# then the figures of docs/RESULTS.md (docs/staleness/)
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/install.sh
source launch/fashion_mnist.sh
export WANDB_MODE=${WANDB_MODE:-disabled}
OUT=${1:-study/staleness}
sweep() { dir=$1; shift; .venv/bin/python -m fr_dist.launch -m +experiment=study_fashion progress=false \
  diag_every=0 hydra.sweep.dir="$OUT/$dir" "$@" || echo "[study] $dir: some points failed (see its results.md)"; }

for seed in 0 1 2; do
  sweep accuracy/seed$seed-bp seed=$seed algo=bp splits=1
  sweep accuracy/seed$seed-split seed=$seed algo=fr,ddg splits=2,3,4
  sweep accuracy/seed$seed-wp seed=$seed algo=fr splits=2,3,4 algo.weight_prediction=true
  sweep accuracy/seed$seed-wp-spike seed=$seed algo=fr splits=2,3,4 algo.weight_prediction=true \
    algo.spike_compensation=true
  if [ $seed = 0 ]; then
    sweep long seed=0 algo=fr splits=4 epochs=10 algo.weight_prediction=true
  fi
done
.venv/bin/python -m fr_dist.plot "$OUT/accuracy" --out docs/staleness
.venv/bin/python -m fr_dist.plot "$OUT/long"  # one run: its table, figures beside it
