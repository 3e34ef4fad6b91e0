"""One rank of tests/runtime/test_replicas.py's DDP reference: ``python -m tests.runtime.ddp_worker OUT CONFIG...``
with RANK, WORLD_SIZE=2, MASTER_ADDR, MASTER_PORT set. Trains the unsplit model of the config with
torch.nn.parallel.DistributedDataParallel on the batches fr_dist's replica of this rank reads (the data's own
shard), with plain SGD at lr(batch), and saves the final state_dict (rank 0)."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from fr_dist import data as datasets
from fr_dist.compose import compose
from fr_dist.config import validate
from fr_dist.models import build_blocks
from fr_dist.optim import make_lr


def main() -> int:
    out, overrides = sys.argv[1], sys.argv[2:]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    c = validate(compose(["splits=1", f"replicas={world}", *overrides]), world)
    data = datasets.load(c.data, c.batch_size, c.seed)
    data.shard(rank, world)
    torch.manual_seed(c.seed)
    model = nn.Sequential(*build_blocks(c.model, data.in_shape, data.classes))
    ddp = nn.parallel.DistributedDataParallel(model)
    o = c.optim
    optimizer = torch.optim.SGD(ddp.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                                weight_decay=o.weight_decay)
    T = c.epochs * data.steps_per_epoch
    lr_of = make_lr(o, data.steps_per_epoch, T)
    for b in range(T):
        loss = F.cross_entropy(ddp(data.inputs(b, prefetch=False)), data.labels(b))
        loss.backward()
        for group in optimizer.param_groups:
            group["lr"] = lr_of(b)
        optimizer.step()
        optimizer.zero_grad()
    if rank == 0:
        torch.save(model.state_dict(), out)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
