"""Download a dataset file, atomically: a failed fetch leaves nothing behind."""

from __future__ import annotations

import os
import urllib.request

TIMEOUT_S = 10.0


def download(url: str, dest: str) -> None:
    """Fetch ``url`` into the file ``dest``; raises OSError when offline."""
    tmp = dest + ".part"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r, open(tmp, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
