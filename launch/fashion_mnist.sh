# Sourced by the launch scripts that train on Fashion-MNIST: Debian's dataset-fashion-mnist
# package when the files are missing (as root with apt); elsewhere the trainer downloads
# the files into its cache.
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null \
   && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >&2 \
    || echo "[launch] apt-get failed; the trainer will try a download" >&2
fi
