#!/usr/bin/env bash
# Install what the tests need into .venv and run them. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/install.sh
export WANDB_MODE=${WANDB_MODE:-disabled}
# pytest exits 5 when no test ran: with `set -e` that fails this script too.
exec .venv/bin/python -m pytest "$@"
