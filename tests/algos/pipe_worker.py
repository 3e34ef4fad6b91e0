"""One rank of tests/algos/test_pipe.py: ``python -m tests.algos.pipe_worker OUT_DIR`` with RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT set. Trains every configuration in CONFIGS with PipeRunner and saves, per
configuration, this rank's final state dict (its chunks' blocks in model order), the returned losses and
the meters to OUT_DIR/rank{k}.pt.
The model, data and learning rates are defined here so that the test's reference uses the same.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

IN, HIDDEN, CLASSES = 8, 32, 5
BATCH, M, STEPS, SEED = 16, 4, 3, 0
# (schedule, checkpoint, dropout): dropout runs are only compared with each other (checkpoint on/off).
SINGLE, VIRTUAL = ("gpipe", "1f1b"), ("interleaved1f1b", "zb", "zbv", "dualpipev")  # 1 and V chunks per rank
V = 2
SPLIT = ("zb", "zbv", "dualpipev")  # split backward: no checkpoint (config.py refuses it)
CONFIGS = [(s, c, d) for d in (False, True) for s in SINGLE + VIRTUAL for c in (False, True) if not (c and s in SPLIT)]


def configs(K: int) -> list[tuple]:
    """What K ranks run: dualpipev needs M >= its 2K stages."""
    return [cfg for cfg in CONFIGS if not (cfg[0] == "dualpipev" and M < 2 * K)]


def build_blocks(dropout: bool = False) -> list[nn.Module]:
    """A BatchNorm-free MLP as a list of blocks, the same on every rank (seeded)."""
    torch.manual_seed(SEED)
    drop = [nn.Dropout(0.3)] if dropout else []
    return [
        nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU()),
        nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.Tanh(), *drop),
        nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.ReLU()),
        nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.Tanh(), *drop),
        nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.ReLU()),
        nn.Sequential(nn.Linear(HIDDEN, CLASSES)),
    ]


def chunks_per_rank(schedule: str) -> int:
    return 1 if schedule in SINGLE else V


def cuts(pieces: int) -> list[int]:
    """Boundaries of `pieces` chunks of the 6 blocks."""
    n = 6
    return [round(i * n / pieces) for i in range(pieces + 1)]


def chunks_of(schedule: str, k: int, K: int) -> list[int]:
    """The chunks rank k holds (looped, or V-shaped for zbv / dualpipev)."""
    from fr_dist.algos.pipe import PIPELINES

    return PIPELINES[schedule].chunks_of(k, K, chunks_per_rank(schedule))


def data():
    g = torch.Generator().manual_seed(SEED + 1)
    return torch.randn(STEPS, BATCH, IN, generator=g), torch.randint(0, CLASSES, (STEPS, BATCH), generator=g)


def lr_of(batch: int) -> float:
    return 0.2 / (1 + batch)  # a different rate per batch: the runner must use lr_of(batch)


def make_optimizer(params):
    return torch.optim.SGD(params, lr=1.0, momentum=0.9)


def run(k: int, K: int, schedule: str, checkpoint: bool, dropout: bool) -> dict:
    from fr_dist.algos.pipe import Chunk, PipeRunner

    blocks = build_blocks(dropout)
    c = cuts(K * chunks_per_rank(schedule))
    with torch.no_grad():  # specs: the whole model is on every rank
        h = torch.zeros(BATCH, IN)
        specs = []
        for b in blocks:
            specs.append((tuple(h.shape), h.dtype))
            h = b(h)
        specs.append((tuple(h.shape), h.dtype))
    mine = chunks_of(schedule, k, K)
    chunks = [Chunk(i, nn.Sequential(*blocks[c[i]:c[i + 1]]), specs[c[i]], specs[c[i + 1]]) for i in mine]
    module = nn.Sequential(*(b for chunk in chunks for b in chunk.module))
    torch.manual_seed(100 + k)  # dropout RNG of this rank, the same for checkpoint on and off
    runner = PipeRunner(module, chunks, k, K, torch.device("cpu"), dist.group.WORLD, schedule, M, BATCH,
                        make_optimizer(module.parameters()), lr_of, checkpoint=checkpoint)
    x, y = data()
    losses = []
    for t in range(STEPS):
        loss = runner.train_step(t, x[t] if 0 in mine else None, y[t] if runner.rank == runner.loss_rank else None)
        assert (loss is None) == (k < K - 1)
        if loss is not None:
            assert loss.dim() == 0
            losses.append(loss)
    return {"state": module.state_dict(), "losses": losses, "peak": runner.peak_mem_bytes, "busy": runner.busy_s}


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    k, K = dist.get_rank(), dist.get_world_size()
    results = {cfg: run(k, K, *cfg) for cfg in configs(K)}
    torch.save(results, out / f"rank{k}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
