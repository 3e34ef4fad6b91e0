#!/usr/bin/env bash
# The main job: ResNet-20 with Features Replay, K = 2 stages, on Fashion-MNIST
# (conf/experiment/fashion_resnet20.yaml). Installs what it needs, gets the data when
# missing, trains. Extra arguments are config overrides, e.g. epochs=1.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/install.sh
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null \
   && [ "$(id -u)" = 0 ]; then
  # Debian's package; elsewhere the trainer downloads the files into its cache.
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >&2 || echo "[train.sh] apt-get failed; the trainer will try a download" >&2
fi
export WANDB_MODE=${WANDB_MODE:-offline}
exec .venv/bin/python -m fr_dist.launch +experiment=fashion_resnet20 "$@"
