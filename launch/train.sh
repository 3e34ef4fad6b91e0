#!/usr/bin/env bash
# The main job: ResNet-20 with Features Replay, K = 2 stages, on Fashion-MNIST
# (conf/experiment/fashion_resnet20.yaml). Installs what it needs, gets the data when
# missing, trains. Extra arguments are config overrides, e.g. epochs=1.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/install.sh
source launch/fashion_mnist.sh
export WANDB_MODE=${WANDB_MODE:-offline}
exec .venv/bin/python -m fr_dist.launch +experiment=fashion_resnet20 "$@"
