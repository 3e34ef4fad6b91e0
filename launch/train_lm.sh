#!/usr/bin/env bash
# The language-model job: a GPT on the bytes of the Python documentation with Features Replay,
# K = 2 (conf/experiment/lm_python_docs.yaml), about 15 minutes on 2 cores. Installs what it
# needs, gets the corpus (Debian's python3.11-doc) when missing, trains.
#   launch/train_lm.sh [OVERRIDES]            FR with K = 2: one run under outputs/
#   launch/train_lm.sh --compare [DIR]        FR (K = 2), 1F1B (K = 2) and BP (one process, 2 threads)
#                                             with the same max_steps through the sweep launcher, into
#                                             DIR (default multirun/lm), then the figures in docs/lm
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/install.sh
source launch/python_docs.sh
export WANDB_MODE=${WANDB_MODE:-offline}
if [ "${1:-}" != --compare ]; then
  exec .venv/bin/python -m fr_dist.launch +experiment=lm_python_docs "$@"
fi
OUT=${2:-multirun/lm}
status=0
.venv/bin/python -m fr_dist.launch -m +experiment=lm_python_docs progress=false algo=fr,1f1b splits=2 \
  hydra.sweep.dir="$OUT/split" || status=1
.venv/bin/python -m fr_dist.launch -m +experiment=lm_python_docs progress=false algo=bp splits=1 \
  threads_per_rank=2 hydra.sweep.dir="$OUT/bp" || status=1
.venv/bin/python -m fr_dist.plot "$OUT" --out docs/lm
exit $status
