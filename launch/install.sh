# Sourced by the launch scripts: a virtual environment in .venv with torch and fr_dist.
# TORCH_SPEC picks another torch build, e.g. TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>".
install_start=$(date +%s)
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086
.venv/bin/python -m pip install --quiet ${TORCH_SPEC:-torch==2.13.0} numpy
.venv/bin/python -m pip install --quiet -e ".[test]"
echo "[install] ready in $(( $(date +%s) - install_start )) s" >&2
