# Sourced by the launch scripts that train on the Python documentation's text: Debian's
# python3.11-doc package when its sources are missing (as root with apt); elsewhere set
# data.data_root to a directory of .txt files.
if [ ! -d /usr/share/doc/python3.11/html/_sources ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq python3.11-doc) >&2 \
    || echo "[launch] apt-get failed; set data.data_root to a text corpus" >&2
fi
