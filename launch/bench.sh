#!/usr/bin/env bash
# The throughput benchmark (fr_dist/tools/bench/): FR K = 2 against BP (1 and 2 threads),
# GPipe and 1F1B on ResNet-20, batch 128, 3x32x32 synthetic data, on this machine's CPU;
# prints a table of medians and ratios and writes bench.json. Installs what it needs
# like launch/test.sh. Extra arguments go to the benchmark, e.g. --quick or --out PATH;
# --frontier measures throughput against peak activation memory instead (frontier.json, .png).
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/install.sh
export WANDB_MODE=disabled
exec .venv/bin/python -m fr_dist.bench "$@"
