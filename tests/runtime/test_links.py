"""Links over gloo between two processes: the staged transport (payloads through host buffers, as for
CUDA stages on gloo) carries exactly what the direct one does, bit for bit, in both directions."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.ranks import free_port
from tests.support import ROOT


def test_staged_links_equal_direct_links():
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2",
               OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "tests.runtime.link_worker"], cwd=ROOT,
                              env=dict(env, RANK=str(r)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    for r, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {r}:\n{out}"
        assert f"rank {r}: 0 mismatches" in out
