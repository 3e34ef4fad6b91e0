#!/usr/bin/env bash
# Install what the tests need into .venv (once) and run them. Extra arguments go to pytest.
# TORCH_SPEC picks another torch build, e.g. TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>".
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086
.venv/bin/python -m pip install --quiet ${TORCH_SPEC:-torch==2.13.0} numpy
.venv/bin/python -m pip install --quiet -e ".[test]"
export WANDB_MODE=${WANDB_MODE:-disabled}
# pytest exits 5 when no test ran: with `set -e` that fails this script too.
exec .venv/bin/python -m pytest "$@"
