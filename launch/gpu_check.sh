#!/usr/bin/env bash
# The GPU check (fr_dist/tools/gpu_check.py): at most 5 minutes on a GPU machine, results in
# gpu_check.json (or --out PATH) and a markdown table.
#   launch/gpu_check.sh --fetch-wheels  on a machine with the package registry: the pure-Python
#                                       wheels an offline GPU node lacks (hydra-core, omegaconf,
#                                       antlr4-python3-runtime, tqdm, pytest) into .gpu_wheels/
#   launch/gpu_check.sh                 on the GPU node, from a copy of this checkout with .gpu_wheels/
#   launch/gpu_check.sh --cpu           the parts that need no GPU, on this machine's CPU
# fr_dist runs from this checkout (PYTHONPATH), never from an installed copy. PYTHON picks the
# interpreter: on the GPU node the preinstalled python3 (its torch is used as it is; missing
# packages go into .gpu_venv/, a venv that sees the system's site-packages); with --cpu this
# checkout's .venv, installed like launch/test.sh unless PYTHON is given.
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=disabled  # fr_dist imports wandb only when it logs: the GPU node needs none
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mode=gpu
for arg in "$@"; do
  case $arg in
    --fetch-wheels) mode=fetch ;;
    --cpu) mode=cpu ;;
  esac
done
if [ $mode = fetch ]; then
  if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
  fi
  exec "$PYTHON" -m fr_dist.tools.gpu_check "$@"
fi
if [ $mode = cpu ]; then
  if [ -z "${PYTHON:-}" ]; then
    source launch/install.sh
    PYTHON=.venv/bin/python
  fi
  exec "$PYTHON" -m fr_dist.tools.gpu_check "$@"
fi
PYTHON=${PYTHON:-python3}
need="import hydra, omegaconf, pytest, tqdm"
if ! "$PYTHON" -c "$need" 2>/dev/null; then
  if [ ! -f .gpu_wheels/requirements.txt ]; then
    echo "[gpu_check] error: $PYTHON lacks hydra-core, omegaconf, pytest or tqdm, and there is no .gpu_wheels/:" \
         "run launch/gpu_check.sh --fetch-wheels on a machine with the package registry, then copy the" \
         "checkout with .gpu_wheels/ here" >&2
    exit 1
  fi
  if [ ! -x .gpu_venv/bin/python ] && ! "$PYTHON" -m venv --system-site-packages .gpu_venv; then
    echo "[gpu_check] error: $PYTHON -m venv failed (Debian: apt-get install python3-venv); or install" \
         "the wheels yourself:" \
         "$PYTHON -m pip install --no-index --find-links .gpu_wheels -r .gpu_wheels/requirements.txt" >&2
    exit 1
  fi
  if ! .gpu_venv/bin/python -c "$need" 2>/dev/null; then
    # offline, from the wheels only; the venv sees the preinstalled torch and never replaces it
    .gpu_venv/bin/python -m pip install --quiet --disable-pip-version-check --no-index \
      --find-links .gpu_wheels -r .gpu_wheels/requirements.txt
  fi
  PYTHON=.gpu_venv/bin/python
fi
exec "$PYTHON" -m fr_dist.tools.gpu_check "$@"
