"""One rank of tests/runtime/test_links.py: ``python -m tests.runtime.link_worker`` with RANK, WORLD_SIZE=2,
MASTER_ADDR, MASTER_PORT set. Rank 0 sends seeded tensors up over a direct and a staged link, rank 1 sends
them back down; each side checks every payload bit for bit against its own copy of the seeded values and
exits 0 only if all match (a mismatched batch id raises in the link itself)."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from fr_dist.runtime.links import Link

SHAPE, STEPS = (4, 3, 5), 6


def payload(i: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + i)
    return torch.randn(SHAPE, generator=g).to(dtype)


def main() -> int:
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", rank=rank, world_size=2)
    peer, cpu = 1 - rank, torch.device("cpu")
    groups = {(0, 1): dist.new_group([0, 1]), (1, 0): dist.new_group([0, 1])}
    bad = 0
    for staged in (False, True):
        for dtype in (torch.float32, torch.bfloat16):
            up = Link("up", groups[(0, 1)], peer, SHAPE, dtype, cpu, staged)
            down = Link("down", groups[(1, 0)], peer, SHAPE, dtype, cpu, staged)
            for i in range(STEPS):
                if rank == 0:
                    up.send(payload(i, dtype), i)
                    got = down.recv(i)
                else:
                    got = up.recv(i)
                    down.send(payload(i, dtype), i)
                bad += not torch.equal(got, payload(i, dtype))
            up.close()
            down.close()
    dist.destroy_process_group()
    print(f"rank {rank}: {bad} mismatches", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
